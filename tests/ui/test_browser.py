"""The UI in a real headless Chromium (Debian's `chromium`, driven by Playwright): train on the
demo data, watch the chart grow, stop, resume, see the best step, generate with the adapter.

Skipped where no Chromium is installed, unless TRILORA_REQUIRE_BROWSER=1 (set by .ci/run, which
installs it): there a missing browser fails. Screenshots go to the test's folder, and to
$TRILORA_UI_SCREENSHOTS when set (the README's come from there).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from safetensors import safe_open

from trilora.run_folder import FolderLock

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("TRILORA_REQUIRE_BROWSER") != "1":
    pytest.skip(
        "no chromium installed (apt-get install chromium); .ci/run installs it", allow_module_level=True
    )
playwright = (
    pytest.importorskip("playwright.sync_api")
    if os.environ.get("TRILORA_REQUIRE_BROWSER") != "1"
    else __import__("playwright.sync_api").sync_api
)

PROMPT = "a red onion-domed building with two floors at night"


@pytest.fixture(scope="module")
def page(ui, tmp_path_factory):
    assert CHROMIUM, "TRILORA_REQUIRE_BROWSER=1 but no chromium is installed"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # bypass_csp: the page's CSP forbids eval, which Playwright's wait_for_function uses
        page = browser.new_page(viewport={"width": 1100, "height": 900}, bypass_csp=True)
        page.goto(f"{ui.base}/#token={ui.token}")
        yield page
        browser.close()


def screenshot(page, name: str, tmp_path_factory) -> None:
    folders = [tmp_path_factory.getbasetemp()] + [
        Path(p) for p in [os.environ.get("TRILORA_UI_SCREENSHOTS")] if p
    ]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"ui-{name}.png"))


@pytest.mark.slow
def test_train_stop_resume_and_generate_in_the_browser(ui, page, tmp_path_factory):
    page.wait_for_function("document.querySelectorAll('#data-items img').length === 30", timeout=30000)
    assert page.locator("#data-items textarea").first.input_value().startswith("a ")
    screenshot(page, "data", tmp_path_factory)

    # a person's own images, uploaded into a dataset they name, then captioned, all by clicks
    from PIL import Image

    mine = tmp_path_factory.mktemp("photos")
    for k, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (48, 32), colour).save(mine / f"photo {k}.png")
    page.fill("#upload-folder", "my-photos")
    page.set_input_files("#upload-files", [str(p) for p in sorted(mine.iterdir())])
    page.wait_for_function("document.querySelectorAll('#data-items img').length === 3", timeout=30000)
    assert page.input_value("#data-folder") == "data/my-photos" and "3 of 3 added" in page.text_content(
        "#upload-status"
    )
    assert (ui.root / "data" / "my-photos" / "photo 0.png").read_bytes() == (
        mine / "photo 0.png"
    ).read_bytes()
    page.click("#caption-missing")
    page.wait_for_function("[...document.querySelectorAll('#data-items textarea')].every((t) => t.value.length > 0)",
                           timeout=60000)  # fmt: skip
    screenshot(page, "upload", tmp_path_factory)
    page.set_input_files("#upload-files", [str(mine / "photo 0.png")])  # again: refused, nothing replaced
    page.wait_for_function("document.getElementById('upload-status').textContent.includes('exists already')")
    # an unsaved caption edit is not lost by opening another folder without asking
    page.locator("#data-items textarea").first.fill("my own words")
    page.select_option("#data-folder", "data/onion")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#data-load")
    assert page.locator("#data-items textarea").first.input_value() == "my own words"
    page.locator("#data-items button").first.click()  # saved: opening another folder asks nothing
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved ')")
    assert (ui.root / "data" / "my-photos" / "photo 0.txt").read_text() == "my own words\n"
    page.click("#data-load")
    page.wait_for_function("document.querySelectorAll('#data-items img').length === 30")

    page.click("button[data-tab=train]")
    page.select_option(
        "#train-preset", "Toy world: the demo's onion style (trains on a CPU)"
    )  # the style preset
    page.fill("#train-name", "ui-run")
    # plain words first, the rest folded; a setting that does not apply is hidden
    assert (
        page.is_visible("label[for='train-form-adapter.rank']")
        and page.text_content("label[for='train-form-adapter.rank']") == "Rank"
    )
    assert not page.is_visible("[name='train.min_snr_gamma']")  # folded under "More train settings"
    page.select_option("[name='adapter.method']", "lora")
    assert page.is_hidden("[data-key='adapter.sigma_init']")  # TriLoRA's own
    page.select_option("[name='adapter.method']", "trilora")
    # a bad value is said beside its field before anything is sent, and nothing starts
    page.fill("[name='adapter.rank']", "-3")
    page.click("#train-start")
    assert page.text_content("[id='train-form-adapter.rank-error']") != ""
    assert not (ui.root / "runs" / "ui-run").exists()
    screenshot(page, "train-error", tmp_path_factory)
    page.fill("[name='adapter.rank']", "16")
    assert page.text_content("[id='train-form-adapter.rank-error']") == ""
    for section in ("validation", "checkpoint"):
        page.click(f"#train-form summary:has-text('More {section} settings')")
    for name, value in {"train.steps": "40", "validation.validate_every": "10", "checkpoint.checkpoint_every": "10",
                        "validation.sample_prompt": PROMPT, "validation.sample_steps": "4"}.items():  # fmt: skip
        page.fill(f"[name='{name}']", value)
    page.fill(
        "[name='validation.signal_prompt']", PROMPT + "|a blue onion-domed building with one floor at dusk"
    )
    page.click("#train-estimate")
    page.wait_for_function("document.getElementById('train-estimate-text').textContent.includes('trainable')")
    screenshot(page, "train", tmp_path_factory)
    page.click("#train-start")

    page.wait_for_function("document.querySelectorAll('#chart .val-point').length >= 2", timeout=180000)
    # what the run is doing now, and the signal stopping follows, plotted beside the loss
    assert page.text_content("#run-phase").startswith("now: ")
    page.wait_for_function("document.querySelectorAll('#chart .signal-point').length >= 2")
    assert "stopping follows it" in page.text_content("#chart")
    page.click("#run-stop")
    page.wait_for_selector("#run-state[data-state=interrupted]", timeout=120000)
    points = page.locator("#chart .val-point").count()
    assert (ui.root / "runs" / "ui-run" / "checkpoints").is_dir()
    # Stop exported the best adapter so far: something to download and test before Resume
    assert "is exported; Resume goes on" in page.text_content("#run-progress")
    assert page.locator("#run-exports a").count() == 2

    # settings the form leaves alone keep the tree's default: an unset on/off/auto option is not "off"
    settings = json.loads((ui.root / "runs" / "ui-run" / "config.json").read_text())
    assert settings["data"]["buckets"] is None and settings["train"]["cache_on_device"] is None
    page.click("#run-resume")
    page.wait_for_function("['finished', 'stopped early'].includes(document.getElementById('run-state').textContent)",
                           timeout=300000)  # fmt: skip
    assert page.title().startswith("✓ ui-run ")  # the page title tells a person in another tab
    assert page.locator("#chart .val-point").count() > points  # the resumed run added validations
    best = page.locator("#best-marker").text_content()
    summary = (ui.root / "runs" / "ui-run" / "summary.json").read_text()
    assert best.startswith("best step ") and f'"best_step": {best.split()[-1]}' in summary
    page.wait_for_selector("#run-samples img")
    assert page.text_content("#run-samples figcaption").endswith(": " + PROMPT)  # each sample says its prompt
    screenshot(page, "runs", tmp_path_factory)

    # the contact sheet, and another step than the best exported from it
    page.wait_for_function("document.getElementById('run-sheet').naturalWidth > 0")
    page.locator("#run-steps").scroll_into_view_if_needed()
    screenshot(page, "steps", tmp_path_factory)
    steps = page.eval_on_selector_all("#run-step option", "os => os.map((o) => o.value)")
    run_steps = json.loads(summary)["steps_run"]
    assert (
        steps == [str(s) for s in range(0, run_steps + 1, 10)]
        and page.input_value("#run-step") == best.split()[-1]
    )
    other = next(s for s in steps if s != best.split()[-1] and s != "0")
    page.select_option("#run-step", other)
    page.click("#run-export-step")
    page.wait_for_selector(f"[data-step-export='{other}']")
    exported = ui.root / "runs" / "ui-run" / f"ui-run-step-{int(other):06d}.safetensors"
    with safe_open(str(exported), "pt") as f:
        assert f.metadata()["trilora_best_step"] == other  # says which step it holds
    assert page.text_content("#run-step-error") == ""

    # a lost server is said at once, and the page picks up again when it answers
    page.route("**/api/ping", lambda route: route.abort())
    page.wait_for_selector("#offline", state="visible", timeout=15000)
    screenshot(page, "offline", tmp_path_factory)
    page.unroute("**/api/ping")
    page.wait_for_selector("#offline", state="hidden", timeout=15000)
    assert page.text_content("#status") == "reconnected"

    page.click("button[data-tab=test]")
    page.wait_for_selector("[data-adapter]")
    page.check("[data-adapter]")
    page.eval_on_selector("[data-strength]", "e => { e.value = '0.8'; e.dispatchEvent(new Event('input')); }")
    # a prompt x strength grid in one job: two prompts, the adapter at 0 and at its slider's 0.8
    page.fill("#test-prompt", PROMPT + "\na blue onion-domed building with one floor at dusk")
    page.fill("#test-grid", "0,1")
    page.fill("#test-steps", "10")
    page.click("#test-generate")
    page.wait_for_selector("img.generated", timeout=120000)
    jobs = sorted((ui.root / "tests").iterdir())
    settings = tomllib.loads((jobs[-1] / "job.toml").read_text())["generate"]
    assert (
        len(settings["prompt"]) == 2
        and settings["strengths"] == [0, 1]
        and settings["lora"][0].endswith(":0.8")
    )
    assert (
        len(jobs) == 1 and (jobs[-1] / "grid.png").is_file() and len(list(jobs[-1].glob("p*-c*-00.png"))) == 4
    )
    assert page.eval_on_selector("img.generated", "e => e.naturalWidth") > 4 * 32  # the labelled grid
    # kept: after a reload the result is listed with its prompts
    page.reload()
    page.wait_for_selector(f"#test-history [data-result='{jobs[-1].name}'] img")
    assert "a blue onion-domed building" in page.text_content("#test-history")
    screenshot(page, "test", tmp_path_factory)

    # the toolbox: the run's adapter, offered in the list, resized to rank 4 in one job, linked for download
    page.click("button[data-tab=tools]")
    page.select_option("#tool-command", "resize")
    page.wait_for_selector("#models-lora option[value='runs/ui-run/ui-run.safetensors']", state="attached")
    page.fill("#tool-form [name='tools.file']", "runs/ui-run/ui-run.safetensors")
    page.fill("#tool-form [name='tools.rank']", "4")
    page.fill("#tool-name", "ui-run-r4")
    page.click("#tool-start")
    page.wait_for_selector("#tool-status a", timeout=60000)
    assert "ui-run-r4.safetensors" in page.text_content("#tool-status")
    with safe_open(str(ui.root / "tools" / "ui-run-r4" / "ui-run-r4.safetensors"), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"
    page.wait_for_selector("#tool-history [data-result='ui-run-r4']")
    screenshot(page, "tools", tmp_path_factory)

    page.click("button[data-tab=evaluate]")
    page.wait_for_selector("#eval-form [name='evaluate.strengths']")
    assert page.input_value("#eval-form [name='evaluate.strengths']") == "0,0.25,0.5,0.75,1"  # from the tree
    screenshot(page, "evaluate", tmp_path_factory)

    # two runs' validation curves on one chart (the second: a copy of the first under another name)
    shutil.copytree(ui.root / "runs" / "ui-run", ui.root / "runs" / "ui-run-copy")
    page.click("button[data-tab=runs]")
    page.click("#overlay summary")
    page.wait_for_selector("#overlay-runs input[value='ui-run-copy']")
    page.check("#overlay-runs input[value='ui-run']")
    page.check("#overlay-runs input[value='ui-run-copy']")
    page.wait_for_function("document.querySelectorAll('#overlay-chart .overlay-line').length === 2")
    assert "ui-run-copy (best step" in page.text_content("#overlay-chart")
    screenshot(page, "overlay", tmp_path_factory)
    # a run is renamed in place: its folder, its files' paths and its place in the list follow
    page.click("[data-run='ui-run-copy']")
    page.wait_for_selector("#run-rename:not([disabled])")
    page.once("dialog", lambda dialog: dialog.accept("renamed-copy"))
    page.click("#run-rename")
    page.wait_for_selector("#run-list [data-run='renamed-copy']")
    assert (ui.root / "runs" / "renamed-copy" / "config.json").is_file() and not (
        ui.root / "runs" / "ui-run-copy"
    ).exists()
    assert "renamed-copy" in page.url

    # the run goes to the workspace's trash, after a confirmation, and its name is free again
    page.click("button[data-tab=runs]")
    page.click("[data-run='ui-run']")
    page.wait_for_selector("#run-delete:not([disabled])")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#run-delete")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('moved ui-run to trash/')"
    )
    page.wait_for_function("!document.querySelector(\"#run-list [data-run='ui-run']\")")  # gone from the list
    assert not (ui.root / "runs" / "ui-run").exists() and any((ui.root / "trash").glob("ui-run-*"))


def test_the_browser_cannot_leave_the_root_or_skip_the_token(ui, page):
    status = page.evaluate(
        f"fetch('/files/..%2F..%2F..%2Fetc%2Fpasswd?token={ui.token}').then(r => r.status)"
    )
    assert status == 403
    assert page.evaluate("fetch('/api/runs').then(r => r.status)") == 403


# WCAG 2 relative luminance and contrast ratio, in the page (colours as the browser computed them)
CONTRAST = """([fg, bg]) => {
  const rgb = (c) => { const d = document.createElement("div"); d.style.color = c; document.body.append(d);
    const v = getComputedStyle(d).color.match(/[\\d.]+/g).slice(0, 3).map(Number); d.remove(); return v; };
  const lum = (c) => { const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""
PAIRS = """() => {
  const style = (sel, prop) => { const e = document.querySelector(sel); return e ? getComputedStyle(e)[prop] : null; };
  const bodyBg = style("body", "backgroundColor"), header = style("header", "backgroundColor");
  return [["body text", style("body", "color"), bodyBg], ["tab", style("#tabs button:not(.active)", "color"), header],
          ["active tab", style("#tabs button.active", "color"), header],
          ["field help", style("#train-form .help", "color"), style("#train-form fieldset", "backgroundColor")],
          ["field label", style("#train-form .field label", "color"), style("#train-form fieldset", "backgroundColor")],
          ["field error", style("#train-form .field-error", "color"), style("#train-form fieldset", "backgroundColor")],
          ["hint", style(".hint", "color"), bodyBg]].filter((p) => p[1] && p[2]);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_input_is_labelled_tabs_have_roles_and_text_is_readable(ui, page, scheme, tmp_path_factory):
    page.emulate_media(color_scheme=scheme)
    page.goto(f"{ui.base}/#token={ui.token}&tab=train")
    page.wait_for_selector("#train-form .field")
    assert page.get_attribute("#tabs", "role") == "tablist"
    assert page.eval_on_selector_all("#tabs button", "bs => bs.map((b) => [b.getAttribute('role'), b.getAttribute('aria-selected')])") == [
        ["tab", "false"], ["tab", "true"], ["tab", "false"], ["tab", "false"], ["tab", "false"], ["tab", "false"],
        ["tab", "false"]
    ]  # fmt: skip
    # every input of every tab has a name a screen reader reads: a <label for>, a wrapping label or aria-label
    unlabelled = page.eval_on_selector_all(
        "input, select, textarea",
        """es => es.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id || e.name || e.outerHTML.slice(0, 80))""",
    )
    assert unlabelled == []
    for name, fg, bg in page.evaluate(PAIRS):
        assert page.evaluate(CONTRAST, [fg, bg]) >= 4.5, (scheme, name, fg, bg)
    for name, colour in [*page.evaluate("PALETTE").items(), *enumerate(page.evaluate("OVERLAY"))]:
        assert page.evaluate(CONTRAST, [colour, "#ffffff"]) >= 4.5, (
            name,
            colour,
        )  # lines and labels on white
    # the tab lives in the address: a reload comes back to it
    page.click("button[data-tab=evaluate]")
    assert "tab=evaluate" in page.url
    page.reload()
    page.wait_for_selector("#evaluate.tab.active")
    if scheme == "dark":  # every page in dark mode too (the light ones are the main test's)
        for tab in ("data", "train", "runs", "test", "evaluate", "tools", "models"):
            page.click(f"button[data-tab={tab}]")
            page.wait_for_selector(f"#{tab}.tab.active")
            if tab == "runs" and page.locator("#run-list .run").count():
                page.locator("#run-list .run").first.click()
                page.wait_for_selector("#run-detail:not([hidden])")
            page.wait_for_timeout(300)  # the tab's lists load
            screenshot(page, f"{tab}-dark", tmp_path_factory)
    page.emulate_media(color_scheme="light")


@pytest.mark.slow
def test_a_checkpoint_file_in_an_a1111_models_folder_is_picked_trained_on_and_tested_without_typing(
    page, tmp_path, tmp_path_factory, monkeypatch
):
    """`trilora ui --models webui/models`, a person's single-file checkpoint there: the Models tab lists
    it, "Use as base model" fills the forms, the estimate reads it where it is, a run trains on it and
    its adapter is tested, with clicks and numbers only. The file is the toy model in the original (LDM)
    layout; a real SD 1.5 file loads with the shipped SD 1.5 configs, which TRILORA_CONFIGS points at the
    toy's here (the one difference)."""
    from trilora.base.load import load_pipeline
    from trilora.config import UIConfig
    from trilora.formats.ldm import save_single_file
    from trilora.toy.base import toy_base_path
    from trilora.ui.server import make_server

    models = tmp_path / "webui" / "models"
    chosen = models / "Stable-diffusion" / "my-model.safetensors"
    chosen.parent.mkdir(parents=True)
    save_single_file(load_pipeline(toy_base_path()), chosen)
    shutil.copytree(
        toy_base_path(), models / "Stable-diffusion" / "toy-sd"
    )  # a diffusers folder, as some keep
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sd1").symlink_to(toy_base_path())
    monkeypatch.setenv("TRILORA_CONFIGS", str(tmp_path / "configs"))
    server = make_server(UIConfig(root=str(tmp_path / "ws"), port=0, models=[str(models)]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    # a second tab of the module's browser (one Playwright per process); bypass_csp for wait_for_function
    tab = page.context.browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
    try:
        tab.goto(f"http://{host}:{port}/#token={server.token}&tab=models")
        tab.wait_for_selector("#model-list td:has-text('Stable-diffusion/my-model.safetensors')")
        # the header, the file and the folder (not the folder's unet, vae ...)
        assert tab.locator("#model-list tr").count() == 3
        screenshot(tab, "models", tmp_path_factory)
        tab.click("#model-list tr:has-text('my-model.safetensors') button")
        tab.click("button[data-tab=train]")
        assert tab.input_value("[name='model.base']") == str(chosen)
        tab.click("#train-estimate")
        tab.wait_for_function("document.getElementById('train-estimate-text').textContent.includes('trainable')",
                              timeout=60000)  # fmt: skip
        assert f"dry run of {chosen}" in tab.text_content("#train-estimate-text")

        # trained on it: a short run of the demo's settings, numbers only
        tab.fill("#train-name", "on-my-model")
        for section in ("validation", "checkpoint"):
            tab.click(f"#train-form summary:has-text('More {section} settings')")
        for name, value in {"train.steps": "4", "validation.validate_every": "2", "checkpoint.checkpoint_every": "2",
                            "validation.sample_steps": "2"}.items():  # fmt: skip
            tab.fill(f"[name='{name}']", value)
        tab.click("#train-start")
        tab.wait_for_function("['finished', 'stopped early'].includes(document.getElementById('run-state').textContent)",
                              timeout=300000)  # fmt: skip
        config = json.loads((server.workspace.root / "runs" / "on-my-model" / "config.json").read_text())
        assert config["model"]["base"] == str(chosen) and config["model"]["base_config"] is None
        # and tested: its adapter on the Test tab, one image
        tab.click("button[data-tab=test]")
        tab.wait_for_selector("[data-adapter]")
        tab.check("[data-adapter]")
        tab.fill("#test-prompt", PROMPT)
        tab.fill("#test-steps", "2")
        tab.click("#test-generate")
        tab.wait_for_selector("img.generated", timeout=120000)
        job = next((server.workspace.root / "tests").iterdir())
        settings = tomllib.loads((job / "job.toml").read_text())
        assert settings["model"]["base"] == str(chosen) and "on-my-model" in settings["generate"]["lora"][0]

        # a preset per family and goal sets how to train and keeps the model chosen (it holds no paths)
        tab.click("button[data-tab=train]")
        options = tab.eval_on_selector_all("#train-preset option", "os => os.map((o) => o.value)")
        assert any("Stable Diffusion XL (sdxl-subject-prior)" in o for o in options), options
        tab.select_option("#train-preset", next(o for o in options if o.endswith("(sd15-dreambooth-prior)")))
        assert tab.input_value("[name='model.base']") == str(chosen)
        assert tab.input_value("[name='data.class_data']") == "data/class_dog"
        assert tab.is_checked("[name='adapter.train_text_encoder']")
    finally:
        tab.close()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(root: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`trilora ui` as a person starts it in a terminal: its own process group, as a shell's job is."""
    process = subprocess.Popen([sys.executable, "-m", "trilora", "ui", "--root", str(root), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    lines = []
    while not lines or "#token=" not in lines[-1]:  # log lines, then the address once it listens
        lines.append(process.stdout.readline())
        if not lines[-1]:  # it ended
            process.wait(timeout=30)
            raise AssertionError("".join(lines))
    threading.Thread(target=process.stdout.read, daemon=True).start()  # its later lines never fill the pipe
    return process, lines[-1].split("#token=")[1].split()[0]


def ctrl_c(process: subprocess.Popen) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=10) == 0  # at once: not after an idle browser connection's 30 s timeout


@pytest.mark.slow
def test_ctrl_c_stops_the_ui_not_its_run_and_the_open_tab_follows_a_restarted_ui(page, tmp_path):
    root, port = tmp_path / "workspace", free_port()
    first, token = start_ui(root, port)
    base = f"http://127.0.0.1:{port}"

    def post(path, body):
        request = urllib.request.Request(base + path, json.dumps(body).encode(), {"X-Trilora-Token": token})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    state = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(base + "/api/state", headers={"X-Trilora-Token": token})
        ).read()
    )
    settings = state["presets"]["Toy world: the demo's onion style (trains on a CPU)"]
    settings["train"] |= {"steps": 150}  # long enough to outlive the UI
    settings["validation"]["validate_every"] = 50
    settings["validation"] |= {
        "sample_prompt": [],
        "signal_prompt": [],
        "stop_on": "val_loss",
        "val_timesteps": 2,
    }
    post("/api/jobs", {"command": "train", "name": "survivor", "settings": settings})

    tab = page.context.browser.new_page(bypass_csp=True)
    # a notification is what the page shows when the run ends: recorded here, granted as if allowed
    tab.add_init_script("window.__notes = []; window.Notification = class { static permission = 'granted'; "
                        "constructor(title, options) { window.__notes.push(options.body); } };")  # fmt: skip
    tab.goto(f"{base}/#token={token}&tab=runs&run=survivor")
    tab.wait_for_selector("#run-state[data-state=running]", timeout=60000)
    folder_lock, deadline = FolderLock(root / "runs" / "survivor", "test"), time.time() + 60
    while folder_lock.holder() is None:  # the trainer has started (it holds its folder's lock)
        assert time.time() < deadline, "the run never started"
        time.sleep(0.2)
    ctrl_c(first)  # the UI goes; the run, in its own session, goes on
    assert folder_lock.holder() is not None and not (root / "runs" / "survivor" / "summary.json").exists()
    tab.wait_for_selector("#offline", state="visible", timeout=15000)

    second, again = start_ui(root, port)
    assert again == token  # kept in the workspace: the open tab is still let in
    tab.wait_for_selector("#offline", state="hidden", timeout=15000)
    assert tab.text_content("#status") == "reconnected"
    tab.wait_for_selector("#run-state[data-state=finished]", timeout=240000)
    assert tab.title().startswith("✓ survivor finished")
    assert tab.evaluate("window.__notes")[-1].startswith("survivor finished: the adapter of step")
    ctrl_c(second)
    tab.close()
