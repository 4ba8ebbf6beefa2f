// trilora's web UI: plain DOM (text via textContent only), the API under /api/, no external assets.
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const $ = (id) => document.getElementById(id);
let STATE = null, CURRENT_RUN = null, RUN_TIMER = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}
function fileUrl(rel) { return "/files/" + rel.split("/").map(encodeURIComponent).join("/") + "?token=" + encodeURIComponent(token); }
function status(text, error = false) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

async function api(path, body) {
  const options = { headers: { "X-Trilora-Token": token } };
  if (body !== undefined) { options.method = "POST"; options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) { status(data.error || response.statusText, true); throw new Error(data.error); }
  if (body !== undefined && $("status").className === "error") status("");  // a success clears an earlier refusal
  return data;
}
// a lost server is said at once, and the page picks up again when it answers
let OFFLINE = false;
async function heartbeat() {
  let up = false;
  try { up = (await fetch("/api/ping", { headers: { "X-Trilora-Token": token } })).ok; } catch (e) { up = false; }
  if (up && OFFLINE) { OFFLINE = false; $("offline").hidden = true; status("reconnected"); if ($("runs").classList.contains("active")) loadRuns().catch(() => {}); }
  if (!up) { OFFLINE = true; $("offline").hidden = false; }
  setTimeout(heartbeat, up ? 5000 : 2000);
}
// Runs this page saw training: when one ends, the page title says so and (if allowed) a notification,
// whichever tab is open; while one trains, the title shows its progress.
const SEEN = {};
async function watchRuns() {
  try { for (const r of await api("/api/runs")) announce(r); } catch (e) { /* the heartbeat says it */ }
  setTimeout(watchRuns, Object.values(SEEN).some((s) => ["running", "queued"].includes(s)) ? 2000 : 10000);
}
function announce(r) {
  const before = SEEN[r.name]; SEEN[r.name] = r.state;
  if (r.state === "running" && r.total_steps) document.title = `${Math.floor(100 * r.step / r.total_steps)}% ${r.name} · trilora`;
  if (!["running", "queued"].includes(before) || ["running", "queued"].includes(r.state)) return;
  const text = `${r.name} ${r.state}` + (r.exported_step !== null && r.exported_step !== undefined ? `: the adapter of step ${r.exported_step} is exported` : "");
  document.title = `${r.state === "failed" ? "✗" : "✓"} ${text} · trilora`;
  status(text, r.state === "failed");
  if ("Notification" in window && Notification.permission === "granted") new Notification("trilora", { body: text, tag: "trilora-" + r.name });
}
function askToNotify() { if ("Notification" in window && Notification.permission === "default") Notification.requestPermission().catch(() => {}); }
function minutes(seconds) { return seconds < 60 ? "under a minute" : `about ${Math.round(seconds / 60)} min`; }

// ---- forms generated from the config tree ----
// What a first-time user sees first, per form; every other setting folds under its section.
const BASIC = {
  train: ["model.base", "data.data", "data.val_data", "data.trigger", "adapter.method", "adapter.rank", "train.steps", "train.lr",
    "train.batch_size", "validation.validate_every", "validation.sample_prompt", "export.name"],
  evaluate: ["model.base", "evaluate.lora", "evaluate.prompts", "evaluate.reference", "evaluate.strengths"],
  compare: ["model.base", "data.data", "data.val_data", "compare.methods", "adapter.rank", "train.steps", "evaluate.prompts", "evaluate.reference"],
  resize: ["tools.file", "tools.rank", "tools.energy", "tools.max_error"],
  merge: ["model.base", "tools.lora", "tools.rank"],
  extract: ["model.base", "tools.tuned", "tools.rank", "tools.energy", "tools.max_error"],
  convert: ["tools.file", "tools.to"],
};
const TOOL_HINTS = {
  resize: "Each module's best approximation of a lower rank: give one of rank, energy (e.g. 0.95) or max error (e.g. 0.05). The strength it needs stays the same; what was kept is reported.",
  merge: "With a base model: the adapters (FILE:STRENGTH, comma-separated) folded into it, one checkpoint file. Without: one adapter, exact unless a lower rank is given.",
  extract: "A LoRA of the difference between a fine-tuned model and its base: give one of rank, energy or max error.",
  convert: "The same adapter in the other layout, tensors and metadata kept.",
};
// Settings that mean nothing unless another says so: hidden (still sent if set) until they apply.
const APPLIES = {
  "adapter.sigma_init": (v) => v("adapter.method") !== "lora",
  "adapter.conv_alpha": (v) => Number(v("adapter.conv_rank")) > 0,
  "train.lr_text_encoder": (v) => v("adapter.train_text_encoder") === true,
  "train.lr_text_encoder_2": (v) => v("adapter.train_text_encoder") === true && ["auto", "sdxl"].includes(v("model.family")),
  "data.class_prompt": (v) => !!v("data.class_data"), "data.num_class_images": (v) => !!v("data.class_data"),
  "data.prior_loss_weight": (v) => !!v("data.class_data"),
  "train.cuda_graphs": (v) => v("train.compile") === true,
  "validation.stop_window": (v) => v("validation.stop_on") !== "val_loss_se",
};
const WORDS = { lr: "learning rate", snr: "SNR", ema: "EMA", te: "text encoder", vae: "VAE", clip: "CLIP", cuda: "CUDA", kid: "KID", fid: "FID",
  dtype: "precision", val: "validation", num: "number of", grad: "gradient", accum: "accumulation", cfg: "CFG", lora: "LoRA", id: "ID" };
const LISTS = { "model.base": "models-base", "evaluate.lora": "models-lora", "tools.file": "models-lora", "tools.tuned": "models-base" };
function label(f) {  // "min-snr-gamma" -> "Min SNR gamma": plain words; the flag stays in the tooltip
  const words = f.flag.split("-").map((w) => WORDS[w] || w).join(" ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}
function firstSentence(help) {  // up to the first ". " or "; " outside parentheses, shown under the field
  let depth = 0;
  for (let i = 0; i < help.length; i++) {
    const c = help[i];
    if (c === "(") depth++; else if (c === ")") depth = Math.max(0, depth - 1);
    else if (depth === 0 && (c === "." || c === ";") && (i + 1 === help.length || help[i + 1] === " ")
      && !/(^|\W)(e\.g|i\.e)$/.test(help.slice(0, i))) return help.slice(0, i) + ".";
  }
  return help;
}
function buildForm(form, fields, values, name) {
  form.replaceChildren();
  const basic = BASIC[name] || [];
  const main = el("fieldset", { class: "basic" }, el("legend", { text: basic.length ? "The settings most runs need" : "Settings" }));
  form.append(main);
  const sections = {};
  for (const f of fields) {
    let input;
    const id = `${form.id}-${f.key}`;
    if (f.type === "bool" && f.default !== null) input = el("input", { type: "checkbox" });
    else if (f.type === "bool") {  // unset means "decide by itself" (--buckets, --cache-on-device): not off
      input = el("select");
      for (const [v, text] of [["", "(decide by itself)"], ["true", "on"], ["false", "off"]]) input.append(el("option", { value: v, text }));
    }
    else if (f.choices && f.type === "list") { input = el("select", { multiple: "" }); for (const c of f.choices) input.append(el("option", { value: c, text: c })); }
    else if (f.choices) { input = el("select"); if (f.default === null) input.append(el("option", { value: "", text: "(default)" })); for (const c of f.choices) input.append(el("option", { value: c, text: c })); }
    else input = el("input", { type: f.type === "int" || f.type === "float" ? "number" : "text", step: f.type === "float" ? "any" : "1" });
    if (LISTS[f.key]) input.setAttribute("list", LISTS[f.key]);  // the models found, offered as you type
    input.name = f.key; input.id = id; input.dataset.type = f.type; input.title = `--${f.flag}: ${f.help}`;
    if (input.type === "number" && f.low !== null) input.min = String(f.low);  // the tree's bounds, checked before sending
    if (input.type === "number" && f.high !== null) input.max = String(f.high);
    setValue(input, value(values, f));
    const error = el("small", { class: "field-error error", id: id + "-error", role: "alert" });
    input.setAttribute("aria-describedby", id + "-help " + id + "-error");
    input.addEventListener("input", () => { checkField(input); applies(form); });
    input.addEventListener("change", () => { checkField(input); applies(form); });
    const row = el("div", { class: "field", "data-key": f.key, "data-flag": f.flag }, el("label", { for: id, text: label(f) }), input,
      el("small", { class: "help", id: id + "-help", text: firstSentence(f.help) }), error);
    if (basic.includes(f.key) || !basic.length && !f.section) { main.append(row); continue; }
    const section = f.section || "run";
    if (!sections[section]) { sections[section] = el("details", { class: "advanced" }, el("summary", { text: `More ${section} settings` })); form.append(sections[section]); }
    sections[section].append(row);
  }
  if (!main.querySelector(".field")) main.remove();
  applies(form);
}
function applies(form) {  // hide what does not apply to the current values
  const get = (key) => { const i = form.elements[key]; return !i ? undefined : i.type === "checkbox" ? i.checked : i.value; };
  for (const row of form.querySelectorAll(".field")) { const rule = APPLIES[row.dataset.key]; row.hidden = !!rule && !rule(get); }
}
function checkField(input) {  // the browser's own check of the tree's bounds and types, said beside the field
  const message = input.validity && !input.validity.valid ? (input.validity.badInput ? "not a number" : input.validationMessage) : "";
  const error = document.getElementById(input.id + "-error");
  if (error) error.textContent = message;
  input.setAttribute("aria-invalid", message ? "true" : "false");
  return !message;
}
function formReady(form) {  // false (and the first bad field shown) when any field is invalid
  const bad = [...form.elements].filter((i) => i.name && !checkField(i));
  if (bad.length) { const d = bad[0].closest("details"); if (d) d.open = true; bad[0].focus(); status(`${bad.length} setting(s) to correct first`, true); }
  return !bad.length;
}
function showServerError(form, message) {  // a refusal that names a setting goes beside it
  for (const e of form.querySelectorAll(".field-error")) e.textContent = "";
  const row = [...form.querySelectorAll(".field")].find((r) => { const f = r.dataset.key; const flag = "--" + r.dataset.flag;
    return message.includes(f) || new RegExp(flag.replace(/[-]/g, "\\-") + "(?![\\w-])").test(message); });
  if (!row) return;
  row.hidden = false; const d = row.closest("details"); if (d) d.open = true;
  row.querySelector(".field-error").textContent = message;
}
function value(values, f) { const v = f.section ? (values[f.section] || {})[f.name] : values[f.name]; return v === undefined ? f.default : v; }
function setValue(input, v) {
  if (input.type === "checkbox") input.checked = !!v;
  else if (input.multiple) for (const o of input.options) o.selected = (v || []).includes(o.value);
  else input.value = v === null || v === undefined ? "" : Array.isArray(v) ? v.join(input.dataset.type === "list" && input.name.endsWith("prompt") ? "|" : ",") : v;
}
function formSettings(form, fields) {
  const out = {};
  for (const f of fields) {
    const input = form.elements[f.key]; if (!input) continue;
    let v;
    if (f.type === "bool") v = input.type === "checkbox" ? input.checked : input.value === "" ? null : input.value === "true";
    else if (input.multiple) v = [...input.selectedOptions].map((o) => o.value);
    else if (input.value === "") v = null;
    else if (f.type === "int") v = parseInt(input.value, 10);
    else if (f.type === "float") v = parseFloat(input.value);
    else if (f.type === "list") { const parts = input.value.split(f.name.endsWith("prompt") ? "|" : ",").map((s) => s.trim()).filter(Boolean); v = typeof f.default[0] === "number" ? parts.map(Number) : parts; }
    else v = input.value;
    if (JSON.stringify(v) === JSON.stringify(f.default)) continue;  // only what differs from the tree's default
    if (v === null) continue;
    (out[f.section] = out[f.section] || {})[f.name] = v;
  }
  return out;
}

// ---- tabs ----
// the tab and run live in the address (beside the token), so reload and back keep them
function remember() {
  const state = new URLSearchParams({ token });
  const tab = document.querySelector("#tabs button.active"); if (tab) state.set("tab", tab.dataset.tab);
  if (CURRENT_RUN) state.set("run", CURRENT_RUN);
  if (location.hash.slice(1) !== state.toString()) history.pushState(null, "", "#" + state.toString());
}
function show(tab, record = true) {
  for (const b of document.querySelectorAll("#tabs button")) {
    const on = b.dataset.tab === tab;
    b.classList.toggle("active", on); b.setAttribute("aria-selected", String(on)); b.tabIndex = on ? 0 : -1;
  }
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === tab);
  if (record) remember();
  if (tab === "runs") loadRuns();
  if (tab === "test") { loadAdapters(); loadResults(); }
  if (tab === "evaluate") loadResults();
  if (tab === "tools") { loadResults(); loadModels().catch(() => {}); }
  if (tab === "models") loadModels();
}

// ---- data ----
let UNSAVED = 0;  // caption boxes edited and not saved: switching folders asks first
async function loadData() {
  const folder = $("data-folder").value; if (!folder) return;
  if (UNSAVED && !confirm(`${UNSAVED} caption edit(s) are not saved. Open ${folder} and lose them?`)) return;
  UNSAVED = 0;
  const resolution = $("data-resolution").value;  // the Data tab's own: not whatever the Train preset holds
  const d = await api("/api/data?folder=" + encodeURIComponent(folder) + "&resolution=" + resolution);
  const r = d.report;
  const lines = [`${r.images} images, ${r.usable} usable; ${r.captions.with_text} with captions`,
    "buckets: " + Object.entries(r.buckets).map(([b, n]) => `${b} (${n})`).join(", "),
    `duplicates: ${r.duplicates.length} group(s)`];
  for (const p of r.problems) lines.push(`${p.file}: ${p.reason}`);
  $("data-report").textContent = lines.join("\n");
  $("data-items").replaceChildren(...d.items.map((item) => {
    const text = el("textarea", { "aria-label": "caption of " + item.image }); text.value = item.caption;
    text.addEventListener("input", () => { if (!text.dataset.dirty) { text.dataset.dirty = "1"; UNSAVED++; } });
    const save = el("button", { text: "Save", "aria-label": "save the caption of " + item.image, onclick: async () => {
      await api("/api/caption-text", { image: item.image, text: text.value }); status("saved " + item.image);
      if (text.dataset.dirty) { delete text.dataset.dirty; UNSAVED--; } } });
    return el("div", { class: "thumb" }, el("img", { src: fileUrl(item.image), alt: item.image }), el("small", { text: item.image }), text, save);
  }));
}
// ---- upload: each file's bytes in one request, checked by the server like check-data ----
async function uploadFiles(files) {
  const folder = $("upload-folder").value.trim();
  const lines = [], box = $("upload-status");
  let added = 0;
  for (const file of files) {
    const response = await fetch(`/api/upload?folder=${encodeURIComponent(folder)}&name=${encodeURIComponent(file.name)}`,
      { method: "POST", body: file, headers: { "X-Trilora-Token": token, "Content-Type": "application/octet-stream" } });
    let answer = {}; try { answer = await response.json(); } catch (e) { answer = { error: response.statusText }; }
    if (response.ok) added++; else lines.push(el("div", { class: "error", text: `${file.name}: ${answer.error}` }));
    box.replaceChildren(el("div", { text: `${added} of ${files.length} added to data/${folder}` }), ...lines);
  }
  if (!added) return;
  STATE = await api("/api/state");
  $("data-folder").replaceChildren(...STATE.folders.map((f) => el("option", { value: f, text: f })));
  $("data-folder").value = `data/${folder}`;
  await loadData();
}
// ---- models: what the --models folders hold, offered to the forms ----
async function loadModels() {
  const found = await api("/api/models");
  const toy = Object.values(STATE.presets)[0].model.base;
  const bases = [toy, ...found.filter((m) => m.kind === "base model" || m.kind === "model").map((m) => m.path)];
  $("models-base").replaceChildren(...bases.map((p) => el("option", { value: p })));
  const exported = (await api("/api/runs").catch(() => [])).filter((r) => r.exported && r.exported.kohya).map((r) => r.exported.kohya);
  $("models-lora").replaceChildren(...[...exported, ...found.filter((m) => m.kind === "LoRA").map((m) => m.path)].map((p) => el("option", { value: p })));
  const size = (b) => b ? `${(b / 2 ** 30).toFixed(b > 2 ** 30 ? 1 : 2)} GiB` : "folder";
  const use = (m) => el("button", { text: "Use as base model", "aria-label": "use " + m.name + " as the base model", onclick: () => {
    const field = $("train-form").elements["model.base"]; if (field) { field.value = m.path; field.dispatchEvent(new Event("change")); }
    $("test-base").value = m.path; status("base model: " + m.name); } });
  $("model-list").replaceChildren(el("tr", {}, ...["model", "kind", "size", "folder", ""].map((h) => el("th", { text: h }))),
    ...(found.length ? found.map((m) => el("tr", {}, el("td", { text: m.name }), el("td", { text: m.kind }), el("td", { text: size(m.bytes) }),
      el("td", { text: m.folder }), el("td", {}, m.kind === "LoRA" ? "" : use(m)))) :
      [el("tr", {}, el("td", { colspan: "5", text: "no model folders given: start the UI with --models DIR (e.g. stable-diffusion-webui/models)" }))]));
}
async function captionMissing() {
  const model = $("caption-model").value;
  const job = await api("/api/jobs", { command: "caption", settings: { data: { data: $("data-folder").value }, caption: { model } } });
  $("caption-status").textContent = "captioning…";
  const done = await waitJob(job.id, (j) => { $("caption-status").textContent = j.state + ": " + (j.log.split("\n").slice(-1)[0] || ""); });
  if (done.state !== "finished") { jobFailed($("caption-status"), "captioning", done); return; }
  loadData();
}
// a failed job: its `trilora: error:` line, and its whole log a click away
function jobFailed(where, what, j) {
  where.replaceChildren(el("span", { class: "error", role: "alert", text: `${what} ${j.state}: ${j.error || j.log.split("\n").slice(-1)[0] || "no message"}` }), " ",
    el("a", { href: fileUrl(j.log_file), target: "_blank", text: "open its log" }));
}
async function waitJob(id, onUpdate) {
  for (;;) {
    const j = await api("/api/job?id=" + id);
    if (onUpdate) onUpdate(j);
    if (!["queued", "running"].includes(j.state)) return j;
    await new Promise((r) => setTimeout(r, 700));
  }
}

// ---- train ----
// A preset sets how to train; the base model and the data already chosen stay (presets from configs/
// hold no paths), so picking "SDXL subject" after "Use as base model" keeps that model.
function applyPreset() {
  const form = $("train-form"), preset = structuredClone(STATE.presets[$("train-preset").value] || {});
  for (const f of STATE.forms.train) {
    const input = form.elements[f.key];
    if (!f.path || !input || !input.value || (preset[f.section] || {})[f.name] !== undefined) continue;
    (preset[f.section] = preset[f.section] || {})[f.name] = input.value;
  }
  buildForm(form, STATE.forms.train, preset, "train");
}
async function estimate() {
  if (!formReady($("train-form"))) return;
  try {
    const d = await api("/api/dry-run", { settings: formSettings($("train-form"), STATE.forms.train) });
    $("train-estimate-text").textContent = d.text; showServerError($("train-form"), "");
  } catch (e) { showServerError($("train-form"), String(e.message || e)); throw e; }
}
async function startTraining() {
  if (!formReady($("train-form"))) return;
  const name = $("train-name").value || undefined;
  let job;
  try { job = await api("/api/jobs", { command: "train", name, settings: formSettings($("train-form"), STATE.forms.train) }); }
  catch (e) { showServerError($("train-form"), String(e.message || e)); throw e; }
  askToNotify();  // a click is the moment a browser lets a page ask
  status("started " + job.folder); SEEN[job.folder.split("/").pop()] = "queued";
  CURRENT_RUN = job.folder.split("/").pop();
  show("runs");
}

// ---- runs ----
async function loadRuns() {
  const runs = await api("/api/runs");
  overlayChoices(runs); runs.forEach(announce);
  $("run-list").replaceChildren(...runs.map((r) => el("button", {
    class: "run" + (r.name === CURRENT_RUN ? " selected" : ""), "data-run": r.name, "aria-pressed": String(r.name === CURRENT_RUN),
    text: `${r.name}: ${r.state}, step ${r.step}${r.total_steps ? "/" + r.total_steps : ""}${r.best_step !== null && r.best_step !== undefined ? ", best " + r.best_step : ""}`,
    onclick: () => { CURRENT_RUN = r.name; remember(); loadRuns(); } })));
  if (CURRENT_RUN) loadRun();
}
async function loadRun() {
  clearTimeout(RUN_TIMER);
  const r = await api("/api/run?name=" + encodeURIComponent(CURRENT_RUN));
  $("run-detail").hidden = false;
  $("run-title").textContent = r.name + (r.method ? ` (${r.method}, rank ${r.rank})` : "");
  $("run-state").textContent = r.state; $("run-state").dataset.state = r.state;
  const eta = r.eta_s !== null && r.eta_s !== undefined && r.state === "running" ? `, ${minutes(r.eta_s)} left` : "";
  $("run-phase").textContent = r.phase ? "now: " + r.phase : "";
  const stopped = r.state === "interrupted" && r.exported_step !== null && r.exported_step !== undefined ? `: stopped, the adapter of step ${r.exported_step} is exported; Resume goes on` : "";
  $("run-progress").textContent = `step ${r.step}${r.total_steps ? " of " + r.total_steps : ""}${eta}${stopped}`;
  $("run-stop").disabled = !["running", "queued"].includes(r.state);
  $("run-resume").disabled = r.state !== "interrupted";
  $("run-delete").disabled = ["running", "queued"].includes(r.state);
  $("run-rename").disabled = ["running", "queued"].includes(r.state);
  drawChart(r);
  $("run-exports").replaceChildren(...Object.entries(r.exported).map(([kind, path]) => el("a", { href: fileUrl(path), text: `download ${kind} (${path.split("/").pop()})` })));
  showSteps(r);
  // the latest validations' samples, each with its prompt; a click opens it full size
  const prompt = (k) => (r.sample_prompts || [])[k] || "";
  $("run-samples").replaceChildren(...r.samples.slice(-3).flatMap((s) => s.images.map((img, k) => el("figure", { class: "thumb sample" },
    el("a", { href: fileUrl(img), target: "_blank", title: "open full size" }, el("img", { src: fileUrl(img), alt: `step ${s.step}: ${prompt(k) || img}` })),
    el("figcaption", { text: `step ${s.step}` + (prompt(k) ? `: ${prompt(k)}` : "") })))));
  $("run-log").textContent = r.log; $("run-log").scrollTop = $("run-log").scrollHeight;
  for (const b of document.querySelectorAll(".run")) { b.classList.toggle("selected", b.dataset.run === r.name); b.setAttribute("aria-pressed", String(b.dataset.run === r.name)); }
  if (["running", "queued"].includes(r.state) && $("runs").classList.contains("active")) RUN_TIMER = setTimeout(loadRuns, 1000);
}
function showSteps(r) {
  $("run-steps").hidden = !(r.sheet || (r.kept && r.kept.length));
  if (r.sheet) { const src = fileUrl(r.sheet) + "&v=" + r.sheet_version; if ($("run-sheet").dataset.src !== src) { $("run-sheet").src = src; $("run-sheet").dataset.src = src; } }
  $("run-sheet").hidden = !r.sheet;
  const label = (k) => `step ${k.step}` + (k.step === r.best_step ? " (best)" : "") + (k.signal !== null && k.signal !== undefined ? `, signal ${k.signal.toFixed(2)}` : "") + (k.val_loss !== null && k.val_loss !== undefined ? `, loss ${k.val_loss.toFixed(4)}` : "");
  const options = (r.kept || []).map((k) => el("option", { value: String(k.step), text: label(k) }));
  const select = $("run-step"), chosen = select.dataset.run === r.name && select.dataset.chosen;  // the user's pick
  if (select.options.length !== options.length || [...select.options].some((o, i) => o.text !== options[i].text)) select.replaceChildren(...options);
  select.dataset.run = r.name;
  select.value = chosen && options.some((o) => o.value === chosen) ? chosen : String(r.best_step);
  $("run-export-step").disabled = ["running", "queued"].includes(r.state) || !options.length;
  $("run-step-exports").replaceChildren(...Object.entries(r.step_exports || {}).flatMap(([step, files]) => Object.entries(files).map(([kind, path]) =>
    el("a", { href: fileUrl(path), "data-step-export": step, text: `download step ${step} ${kind} (${path.split("/").pop()})` }))));
}
async function exportStep() {
  $("run-step-error").textContent = "";
  try {
    const done = await api("/api/export-step", { name: CURRENT_RUN, step: Number($("run-step").value) });
    status(`exported step ${done.step} of ${CURRENT_RUN}`); loadRun();
  } catch (e) { $("run-step-error").textContent = String(e.message || e); throw e; }
}
// the chart's colours, each at least 4.5:1 on its white ground (text and lines alike; tested)
const PALETTE = { axis: "#6e6e6e", train: "#556479", val: "#c0004f", signal: "#1b7a3a", best: "#6a3d9a" };
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) { const n = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; return n; }
function drawChart(r) {
  const chart = $("chart"); chart.replaceChildren();
  const W = 720, H = 300, L = 60, R = 20, T = 20, B = 40;
  const points = [...r.train, ...r.val];
  if (!points.length) { chart.append(svg("text", { x: L, y: H / 2 }, "no steps yet")); return; }
  const maxStep = Math.max(r.total_steps || 0, ...points.map((p) => p.step), 1);
  const smoothed = []; let ema = null;
  for (const p of r.train) { ema = ema === null ? p.loss : 0.9 * ema + 0.1 * p.loss; smoothed.push({ step: p.step, loss: ema }); }
  const ys = [...smoothed.map((p) => p.loss), ...r.val.flatMap((p) => [p.loss - (p.se || 0), p.loss + (p.se || 0)])];
  let lo = Math.min(...ys), hi = Math.max(...ys); if (hi - lo < 1e-9) { hi += 1e-3; lo -= 1e-3; }
  const x = (s) => L + (W - L - R) * s / maxStep, y = (v) => T + (H - T - B) * (hi - v) / (hi - lo);
  chart.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: PALETTE.axis }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: PALETTE.axis }));
  for (const v of [lo, (lo + hi) / 2, hi]) chart.append(svg("text", { x: 4, y: y(v) + 4, "font-size": 11 }, v.toFixed(4)));
  chart.append(svg("text", { x: W - R - 30, y: H - 10, "font-size": 11 }, "step"), svg("text", { x: L, y: H - 10, "font-size": 11 }, "0"), svg("text", { x: W - R - 80, y: H - 24, "font-size": 11 }, String(maxStep)));
  if (smoothed.length) chart.append(svg("polyline", { points: smoothed.map((p) => `${x(p.step)},${y(p.loss)}`).join(" "), fill: "none", stroke: PALETTE.train, "stroke-width": 1.5, class: "train-line" }));
  for (const p of r.val) {
    const g = svg("g", { class: "val-point" });
    if (p.se) g.append(svg("line", { x1: x(p.step), x2: x(p.step), y1: y(p.loss - p.se), y2: y(p.loss + p.se), stroke: PALETTE.val }));
    g.append(svg("circle", { cx: x(p.step), cy: y(p.loss), r: 3.5, fill: PALETTE.val }));
    chart.append(g);
  }
  const signal = r.val.filter((p) => p.signal !== null && p.signal !== undefined);
  if (signal.length) {  // what stopping follows: the held-out prompts' score, on its own axis at the right
    // a share of prompts (the toy judge) on its whole 0..1 scale; another score (CLIP) on its own range
    let slo = Math.min(...signal.map((p) => p.signal)), shi = Math.max(...signal.map((p) => p.signal));
    if (slo >= 0 && shi <= 1) { slo = 0; shi = 1; } else if (shi - slo < 1e-9) { shi += 0.05; slo -= 0.05; }
    const ys2 = (v) => T + (H - T - B) * (shi - v) / (shi - slo);
    chart.append(svg("polyline", { points: signal.map((p) => `${x(p.step)},${ys2(p.signal)}`).join(" "), fill: "none", stroke: PALETTE.signal, "stroke-width": 2, class: "signal-line" }));
    for (const p of signal) chart.append(svg("rect", { x: x(p.step) - 3, y: ys2(p.signal) - 3, width: 6, height: 6, fill: PALETTE.signal, class: "signal-point" }));
    for (const v of [slo, shi]) chart.append(svg("text", { x: W - R - 2, y: ys2(v) + 4, "font-size": 11, "text-anchor": "end", fill: PALETTE.signal }, v.toFixed(2)));
    chart.append(svg("text", { x: W - 340, y: T + 46, "font-size": 11, fill: PALETTE.signal }, "held-out prompts' score, right axis" + (r.stop_on === "generation" ? " (stopping follows it)" : "")));
  }
  if (r.best_step !== null && r.best_step !== undefined && r.val.length) {
    chart.append(svg("line", { x1: x(r.best_step), x2: x(r.best_step), y1: T, y2: H - B, stroke: PALETTE.best, "stroke-dasharray": "4 3" }),
      svg("text", { id: "best-marker", x: x(r.best_step) + (x(r.best_step) > W - 120 ? -4 : 4), y: H - B - 8, fill: PALETTE.best,
        "font-size": 12, "text-anchor": x(r.best_step) > W - 120 ? "end" : "start" }, "best step " + r.best_step));
  }
  chart.append(svg("text", { x: W - 340, y: T + 18, "font-size": 11, fill: PALETTE.train }, "train loss (smoothed)"), svg("text", { x: W - 340, y: T + 32, "font-size": 11, fill: PALETTE.val }, "validation loss ± s.e."));
}
// ---- several runs' validation curves on one chart ----
const OVERLAY = ["#1f5fa8", "#c0004f", "#1b7a3a", "#6a3d9a", "#8a5a00", "#007780"];  // each >= 4.5:1 on white
function overlayChoices(runs) {
  const box = $("overlay-runs"), chosen = new Set([...box.querySelectorAll("input:checked")].map((c) => c.value));
  box.replaceChildren(...runs.map((r) => el("label", {}, el("input", { type: "checkbox", value: r.name, ...(chosen.has(r.name) ? { checked: "" } : {}),
    onchange: () => drawOverlay().catch(() => {}) }), " " + r.name)));
}
async function drawOverlay() {
  const names = [...$("overlay-runs").querySelectorAll("input:checked")].map((c) => c.value).slice(0, OVERLAY.length);
  const runs = await Promise.all(names.map((n) => api("/api/run?name=" + encodeURIComponent(n))));
  const chart = $("overlay-chart"); chart.replaceChildren();
  const W = 720, H = 300, L = 60, R = 20, T = 20, B = 40;
  const points = runs.flatMap((r) => r.val);
  if (!points.length) { chart.append(svg("text", { x: L, y: H / 2 }, "tick runs above to compare their validation loss")); return; }
  const maxStep = Math.max(...points.map((p) => p.step), 1);
  let lo = Math.min(...points.map((p) => p.loss)), hi = Math.max(...points.map((p) => p.loss)); if (hi - lo < 1e-9) { hi += 1e-3; lo -= 1e-3; }
  const x = (v) => L + (W - L - R) * v / maxStep, y = (v) => T + (H - T - B) * (hi - v) / (hi - lo);
  chart.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: PALETTE.axis }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: PALETTE.axis }));
  for (const v of [lo, hi]) chart.append(svg("text", { x: 4, y: y(v) + 4, "font-size": 11 }, v.toFixed(4)));
  chart.append(svg("text", { x: W - R - 30, y: H - 10, "font-size": 11 }, "step"), svg("text", { x: W - R - 80, y: H - 24, "font-size": 11 }, String(maxStep)));
  runs.forEach((r, k) => {
    chart.append(svg("polyline", { class: "overlay-line", points: r.val.map((p) => `${x(p.step)},${y(p.loss)}`).join(" "), fill: "none", stroke: OVERLAY[k], "stroke-width": 2 }));
    if (r.best_step !== null && r.best_step !== undefined) { const b = r.val.find((p) => p.step === r.best_step); if (b) chart.append(svg("circle", { cx: x(b.step), cy: y(b.loss), r: 4, fill: OVERLAY[k] })); }
    chart.append(svg("text", { x: W - 260, y: T + 14 * (k + 1), "font-size": 11, fill: OVERLAY[k] }, `${r.name} (best step ${r.best_step ?? "–"}: dot)`));
  });
}
async function stopRun() { await api("/api/stop", { name: CURRENT_RUN }); status("stopping " + CURRENT_RUN + " (a checkpoint first)"); loadRuns(); }
async function deleteRun() {
  if (!confirm(`Move the run ${CURRENT_RUN} to the workspace's trash folder? Its name becomes free; nothing is deleted.`)) return;
  const done = await api("/api/delete-run", { name: CURRENT_RUN });
  status(`moved ${done.trashed} to ${done.to}`); CURRENT_RUN = null; $("run-detail").hidden = true; remember(); loadRuns();
}
async function renameRun() {
  const to = prompt(`A new name for the run ${CURRENT_RUN} (letters, digits, '.', '_', '-'); its folder and exported files follow:`, CURRENT_RUN);
  if (!to || to === CURRENT_RUN) return;
  const done = await api("/api/rename-run", { name: CURRENT_RUN, to });
  status(`renamed ${done.renamed} to ${done.to}`); CURRENT_RUN = done.to; remember(); loadRuns();
}
async function resumeRun() { await api("/api/resume", { name: CURRENT_RUN }); status("resuming " + CURRENT_RUN); setTimeout(loadRuns, 500); }

// ---- test ----
async function loadAdapters() {
  const runs = await api("/api/runs");
  const rows = runs.filter((r) => r.exported.kohya).map((r) => {
    const use = el("input", { type: "checkbox", "data-adapter": r.exported.kohya });
    const strength = el("input", { type: "range", min: "0", max: "1.5", step: "0.05", value: "1", "data-strength": r.exported.kohya, "aria-label": "strength of " + r.name });
    const shown = el("span", { text: "1" }); strength.addEventListener("input", () => { shown.textContent = strength.value; });
    return el("div", { class: "row" }, el("label", {}, use, " " + r.name + " (" + r.exported.kohya + ")"), strength, shown);
  });
  $("test-adapters").replaceChildren(...(rows.length ? rows : [el("p", { text: "no exported adapters yet: train one first" })]));
}
function chosenAdapters() {
  return [...document.querySelectorAll("[data-adapter]")].filter((c) => c.checked)
    .map((c) => `${c.dataset.adapter}:${document.querySelector(`[data-strength="${c.dataset.adapter}"]`).value}`);
}
async function generate() {
  const prompts = $("test-prompt").value.split("\n").map((v) => v.trim()).filter(Boolean);
  const settings = { model: { base: $("test-base").value },
    sampling: { seed: parseInt($("test-seed").value, 10), steps: parseInt($("test-steps").value, 10), guidance: parseFloat($("test-guidance").value) },
    generate: { prompt: prompts, lora: chosenAdapters(), adapters: $("test-adapters-mode").value } };
  const strengths = $("test-grid").value.split(",").map((v) => v.trim()).filter(Boolean).map(Number);
  if (strengths.length) settings.generate.strengths = strengths;
  if ($("test-negative").value) settings.generate.negative_prompt = $("test-negative").value;
  if ($("test-scheduler").value) settings.sampling.scheduler = $("test-scheduler").value;
  const job = await api("/api/jobs", { command: "generate", settings });
  status("generating…");
  const done = await waitJob(job.id);
  if (done.state !== "finished") { jobFailed($("test-images"), "generate", done); return; }
  status("generated");
  const grid = done.images.find((img) => img.endsWith("/grid.png"));
  $("test-images").replaceChildren(...(grid ? [grid] : done.images).map((img) => el("figure", { class: "thumb" + (grid ? " grid" : "") },
    el("a", { href: fileUrl(img), target: "_blank", title: "open full size" }, el("img", { src: fileUrl(img), alt: prompts.join("; "), class: "generated" })),
    el("figcaption", { text: settings.generate.lora.join(", ") || "base model" }))));
  loadResults();
}
async function runGenerate() { await generate(); }
async function loadResults() {
  const all = await api("/api/results");
  resultList($("test-history"), all);
  resultList($("eval-history"), all.filter((r) => r.kind === "reports"));
  resultList($("tool-history"), all.filter((r) => r.kind === "tools"));
}
function resultList(where, results) {
  where.replaceChildren(...(results.length ? results : [null]).slice(0, 30).map((r) => r === null ? el("p", { text: "none yet" }) :
    el("div", { class: "result", "data-result": r.name },
      el("strong", { text: `${{ tests: "images", reports: "report", tools: "files" }[r.kind]} ${r.name}` }),
      el("span", { text: ` (${r.state}, ${new Date(r.time * 1000).toLocaleString()})` + (r.prompts.length ? ": " + r.prompts.join("; ") : "") }),
      ...(r.report ? [" ", el("a", { href: fileUrl(r.report), target: "_blank", text: "open report" })] : []),
      ...(r.files || []).flatMap((f) => [" ", el("a", { href: fileUrl(f), download: "", text: f })]),
      ...(r.error && r.log_file ? [" ", el("span", { class: "error", text: r.error }), " ", el("a", { href: fileUrl(r.log_file), target: "_blank", text: "log" })] : []),
      el("div", { class: "thumbs" }, ...r.images.map((img) => el("a", { href: fileUrl(img), target: "_blank" }, el("img", { src: fileUrl(img), alt: img, class: "history" })))))));
}

// ---- evaluate / compare ----
function evalForm() { buildForm($("eval-form"), STATE.forms[$("eval-command").value], {}, $("eval-command").value); }
async function formJob(prefix) {  // the job a form of this prefix (eval, tool) starts, when it has ended; null if not started
  const command = $(prefix + "-command").value, form = $(prefix + "-form");
  if (!formReady(form)) return null;
  let job;
  try { job = await api("/api/jobs", { command, name: $(prefix + "-name").value || undefined, settings: formSettings(form, STATE.forms[command]) }); }
  catch (e) { showServerError(form, String(e.message || e)); throw e; }
  $(prefix + "-status").textContent = command + " running…";
  const done = await waitJob(job.id);
  loadResults();
  return done;
}
async function startEval() {
  const done = await formJob("eval");
  if (!done) return;
  if (done.reports.length) $("eval-status").replaceChildren(el("a", { href: fileUrl(done.reports[0]), target: "_blank", text: "open report.html" }));
  else jobFailed($("eval-status"), done.command, done);
}

// ---- the adapter toolbox ----
function toolForm() {
  const command = $("tool-command").value;
  buildForm($("tool-form"), STATE.forms[command], {}, command);
  $("tool-hint").textContent = TOOL_HINTS[command];
}
async function startTool() {
  const done = await formJob("tool");
  if (!done) return;
  if (done.state === "finished" && done.files.length) {
    $("tool-status").replaceChildren(`${done.command} finished:`, ...done.files.flatMap((f) => [" ", el("a", { href: fileUrl(f), download: "", text: f.split("/").slice(2).join("/") })]));
  } else jobFailed($("tool-status"), done.command, done);
}

async function init() {
  STATE = await api("/api/state");
  $("workspace").textContent = `Workspace: ${STATE.root} (every folder and file the UI reads or writes is in it)`;
  $("data-folder").replaceChildren(...STATE.folders.map((f) => el("option", { value: f, text: f })));
  $("train-preset").replaceChildren(...Object.keys(STATE.presets).map((p) => el("option", { value: p, text: p })));
  const scheduler = STATE.forms.generate.find((f) => f.key === "sampling.scheduler");
  $("test-scheduler").replaceChildren(el("option", { value: "", text: "(the base model's)" }), ...scheduler.choices.map((c) => el("option", { value: c, text: c })));
  const toy = Object.values(STATE.presets)[0];
  $("test-base").value = toy.model.base;
  $("test-prompt").value = "a red onion-domed building with two floors at night";
  $("test-base").setAttribute("list", "models-base");
  applyPreset(); evalForm(); toolForm(); loadModels().catch(() => {});
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
  $("tabs").addEventListener("keydown", (e) => {  // arrow keys move between tabs, as ARIA's tab pattern says
    const tabs = [...document.querySelectorAll("#tabs button")], i = tabs.indexOf(document.activeElement);
    if (i < 0 || !["ArrowLeft", "ArrowRight"].includes(e.key)) return;
    const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length]; next.focus(); show(next.dataset.tab);
  });
  window.addEventListener("popstate", () => { const h = new URLSearchParams(location.hash.slice(1)); CURRENT_RUN = h.get("run"); show(h.get("tab") || "data", false); });
  const on = (id, f) => $(id).addEventListener("click", (e) => { e.preventDefault(); f().catch(() => {}); });
  $("upload-files").addEventListener("change", () => { uploadFiles([...$("upload-files").files]).catch((e) => status(String(e), true)); });
  const drop = $("upload");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadFiles([...e.dataTransfer.files]).catch((err) => status(String(err), true)); });
  on("data-load", loadData); on("caption-missing", captionMissing); on("train-estimate", estimate); on("train-start", startTraining);
  on("run-stop", stopRun); on("run-resume", resumeRun); on("run-delete", deleteRun); on("run-rename", renameRun); on("run-export-step", exportStep); on("test-generate", runGenerate); on("eval-start", startEval); on("tool-start", startTool);
  $("train-preset").addEventListener("change", applyPreset);
  $("run-step").addEventListener("change", () => { $("run-step").dataset.chosen = $("run-step").value; }); $("eval-command").addEventListener("change", evalForm);
  $("tool-command").addEventListener("change", toolForm);
  const hash = new URLSearchParams(location.hash.slice(1));
  CURRENT_RUN = hash.get("run");
  const tab = ["data", "train", "runs", "test", "evaluate", "tools", "models"].includes(hash.get("tab")) ? hash.get("tab") : "data";
  show(tab, false); loadData().catch(() => {});
  heartbeat(); watchRuns();
  window.addEventListener("beforeunload", (e) => { if (UNSAVED) { e.preventDefault(); e.returnValue = ""; } });
}
init().catch((e) => status(String(e), true));
