"""The UI's JSON API: each function takes the workspace and the request's data and returns what
the page shows. Jobs run the CLI; paths come and go relative to the root."""

import io
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trilora.config import COMMANDS, load_toml, to_toml, tree_from_dict
from trilora.config.fields import base_type, default_of, toml_value
from trilora.data.check import check_folder
from trilora.data.folder import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, scan
from trilora.data.subsets import load_dataset_config
from trilora.errors import UserError, one_line
from trilora.files import atomic_path, save_safetensors, write_json, write_text
from trilora.outputs import check_name
from trilora.run_folder import holder_process
from trilora.ui.jobs import LOG, SETTINGS, Jobs
from trilora.ui.paths import inside
from trilora.ui.runs import (
    RUNS,
    describe_or_unreadable,
    describe_run,
    log_tail,
    read_json,
    read_log,
    relative,
    run_folders,
    run_state,
)

TOOLS = ("resize", "merge", "extract", "convert")  # the adapter toolbox: one job, one file (or folder) out
FORMS = ("train", "caption", "generate", "evaluate", "compare", *TOOLS)
OUTPUT_FOLDERS = {
    "train": "runs",
    "generate": "tests",
    "evaluate": "reports",
    "compare": "reports",
} | dict.fromkeys(TOOLS, "tools")
TRASH = "trash"  # runs moved out of the list, never unlinked
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class BadRequest(UserError):
    pass


UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


@dataclass
class Workspace:
    root: Path
    jobs: Jobs
    allowed: tuple[
        Path, ...
    ]  # read-only folders outside the root a model setting may name (the toy base, --models)
    presets: dict[str, dict]
    models: tuple[Path, ...] = ()  # the --models folders


# the settings that name a model (read, never written): the only ones that may point into --models folders
MODEL_SETTINGS = {"model.base", "model.base_config", "validation.clip_model", "evaluate.inception_weights",
                  "evaluate.clip_model", "caption.model", "evaluate.lora", "generate.lora", "tools.file", "tools.lora",
                  "tools.tuned"}  # fmt: skip
MODEL_KINDS = {"stable-diffusion": "base model", "checkpoints": "base model", "lora": "LoRA", "loras": "LoRA",
               "lycoris": "LoRA", "clip": "CLIP", "blip": "captioner", "interrogators": "captioner",
               "inception": "metric model"}  # fmt: skip
MODEL_FILES = (".safetensors", ".ckpt", ".pt", ".pth")
MAX_LISTED = 500


def models(ws: Workspace) -> list[dict]:
    """The models in the --models folders: single files and diffusers folders, each with what its
    folder says it is (A1111's Stable-diffusion/ and Lora/, ComfyUI's checkpoints/ and loras/, ...)."""
    found = []
    for top in ws.models:
        inner: list[Path] = []  # diffusers folders: listed once, not their parts
        for path in sorted(top.rglob("*")):
            if len(found) >= MAX_LISTED:
                return found
            if any(folder in path.parents for folder in inner):
                continue
            diffusers = path.is_dir() and (path / "model_index.json").is_file()
            if diffusers:
                inner.append(path)
            if not diffusers and not (path.suffix.lower() in MODEL_FILES and path.is_file()):
                continue
            if any(part.startswith(".") for part in path.relative_to(top).parts):
                continue
            folders = [p.lower() for p in path.relative_to(top).parts[:-1]]
            kind = (
                "base model"
                if diffusers
                else next((MODEL_KINDS[f] for f in reversed(folders) if f in MODEL_KINDS), "model")
            )
            found.append({"path": str(path), "name": str(path.relative_to(top)), "folder": str(top), "kind": kind,
                          "bytes": 0 if diffusers else path.stat().st_size})  # fmt: skip
    return found


def schema() -> dict[str, list[dict]]:
    """Each form's fields, from the config tree: a new setting appears in the UI without UI code."""
    forms = {}
    for name in FORMS:
        command = COMMANDS[name]
        fields = []
        for key, section, spec, annotation, flag in command.fields():
            if (
                not spec.metadata["saved"]
                or key in ("output",)
                or (name != "train" and key.endswith(".output"))
            ):
                continue  # how a job starts, and where it writes, are the UI's to choose
            kind = base_type(annotation)
            fields.append({"key": key, "section": section, "name": spec.name, "flag": flag, "help": spec.metadata["help"],
                           "type": "list" if spec.metadata["repeat"] or spec.metadata["comma"] else kind.__name__,
                           "default": default_of(spec), "choices": spec.metadata["choices"],
                           "path": spec.metadata["path"], "low": spec.metadata["low"],
                           "high": spec.metadata["high"]})  # fmt: skip
        forms[name] = fields
    return forms


def data_folders(root: Path) -> list[str]:
    """Folders under the root (not runs or outputs) that hold images."""
    found = set()
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            top = path.relative_to(root).parts[0]
            if top not in (*OUTPUT_FOLDERS.values(), TRASH):
                found.add(str(path.parent.relative_to(root)))
    return sorted(found)


def upload(ws: Workspace, folder: str, name: str, content: bytes) -> dict:
    """One image from the browser into data/FOLDER/NAME: names are file names, the bytes must be an
    image Pillow reads whole (of a kind training reads), and nothing that exists is replaced."""
    check_name(folder, "the dataset's name")
    check_name(name, "the image's file name")
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise BadRequest(f"{name!r} is not an image file name: training reads {', '.join(IMAGE_EXTENSIONS)}")
    path = inside(ws.root, f"data/{folder}/{name}")
    if path.exists() or path.is_symlink():
        raise BadRequest(
            f"data/{folder}/{name} exists already: nothing was replaced (rename the file to add it)"
        )
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise BadRequest(
                    f"{name!r} is {image.width}x{image.height}: more than {MAX_IMAGE_PIXELS:,} pixels"
                )
            kind = image.format
            image.load()  # decodes every pixel: a truncated or damaged file is refused here, not in training
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRequest(f"{name!r} is not an image Pillow can read ({one_line(error)[:120]})") from None
    if kind not in UPLOAD_FORMATS:
        raise BadRequest(f"{name!r} holds a {kind} image: upload PNG, JPEG, WebP or BMP")
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)
    return {"image": str(path.relative_to(ws.root)), "folder": f"data/{folder}"}


def state(ws: Workspace) -> dict:
    return {"root": str(ws.root), "forms": schema(), "presets": ws.presets, "folders": data_folders(ws.root)}


def data(ws: Workspace, folder: str, resolution: int = 512) -> dict:
    path = inside(ws.root, folder)
    items = [item for item in scan(path) if within(ws.root, item.image)]
    report = check_folder(path, resolution, count_tokens=False).as_dict()
    return {"folder": folder, "report": report,
            "items": [{"image": str(i.image.relative_to(ws.root)), "caption": caption_shown(ws.root, i),
                       "problem": i.caption_problem.reason if i.caption_problem else None} for i in items]}  # fmt: skip


def within(root: Path, path: Path) -> bool:
    """Whether `path`, links followed, is in the workspace: the UI never reads through a link out."""
    return path.resolve().is_relative_to(root.resolve())


def caption_shown(root: Path, item) -> str:
    """The caption, unless its file is a link out of the workspace (then never read back to the page)."""
    return item.caption if within(root, item.image.with_suffix(".txt")) else ""


def save_caption(ws: Workspace, image: str, text: str) -> dict:
    path = inside(ws.root, image)
    if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
        raise BadRequest(f"not an image in the workspace: {image}")
    if not isinstance(text, str) or len(text) > 10000:
        raise BadRequest("a caption is text of at most 10000 characters")
    write_text(path.with_suffix(".txt"), text.strip() + "\n")
    return {"image": image, "caption": text.strip()}


def resolved(ws: Workspace, command: str, settings: dict) -> dict:
    """The form's settings, checked against the tree, with every path resolved under the root."""
    if not isinstance(settings, dict):
        raise BadRequest("settings must be an object of sections")
    fields = {key: spec for key, _, spec, _, _ in COMMANDS[command].fields()}
    out = {}
    for section, values in settings.items():
        if not isinstance(values, dict):
            raise BadRequest(f"[{section}] must be an object of settings")
        for name, value in values.items():
            key = f"{section}.{name}"
            if key not in fields:
                raise BadRequest(f"`trilora {command}` has no setting {key}")
            if (
                fields[key].metadata["path"]
                and value not in (None, "")
                and (key, value) != ("caption.model", "toy")
            ):
                paths = value if isinstance(value, list) else [value]
                if not all(isinstance(p, str) for p in paths):
                    raise BadRequest(f"{key} must be a path in the workspace")
                allowed = ws.allowed if key in MODEL_SETTINGS else ()  # data, outputs: the workspace only
                if key in ("generate.lora", "tools.lora"):
                    checked = [lora_spec(ws, p) for p in paths]
                else:
                    checked = [str(inside(ws.root, p, allowed)) for p in paths]
                value = checked if isinstance(value, list) else checked[0]
            out.setdefault(section, {})[name] = value
    tree = tree_from_dict(out, "the form", command)  # types, choices and bounds, named by key
    if command == "train" and tree.export.name is not None:
        check_name(tree.export.name, "export.name")
    if command in ("train", "compare") and tree.data.dataset_config:
        for subset in load_dataset_config(tree.data.dataset_config):  # its folders, too, in the workspace
            inside(ws.root, str(subset.folder))
    return out


def lora_spec(ws: Workspace, spec: str) -> str:
    path, _, strength = spec.rpartition(":") if re.search(r":-?[0-9.]+$", spec) else (spec, "", "")
    return str(inside(ws.root, path, ws.allowed)) + (f":{strength}" if strength else "")


def new_folder(ws: Workspace, command: str, name: str | None) -> Path:
    name = name or f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadRequest(f"a name is letters, digits, '.', '_' and '-', got {name!r}")
    folder = ws.root / OUTPUT_FOLDERS.get(command, "jobs") / name
    if folder.exists() and any(folder.iterdir()):
        raise BadRequest(f"{folder.relative_to(ws.root)} exists already: choose another name")
    return folder


def start_job(ws: Workspace, command: str, settings: dict, name: str | None = None) -> dict:
    if command not in FORMS:
        raise BadRequest(f"no such job: {command}")
    settings = resolved(ws, command, settings)
    if command == "caption":
        folder = inside(ws.root, settings.get("data", {}).get("data") or "")
        job_folder = ws.root / "jobs" / f"caption-{time.strftime('%Y%m%d-%H%M%S')}-{len(ws.jobs.jobs)}"
        settings.setdefault("data", {})["data"] = str(folder)
    else:
        job_folder = new_folder(ws, command, name)
        if command == "train":
            settings["output"] = str(job_folder)
        elif command in TOOLS:  # NAME.safetensors in the job's folder (convert to diffusers: the folder NAME)
            diffusers = command == "convert" and settings.get("tools", {}).get("to") == "diffusers"
            settings.setdefault("tools", {})["output"] = str(
                job_folder / (job_folder.name + ("" if diffusers else ".safetensors"))
            )
        else:
            section = "generate" if command == "generate" else "evaluate"
            settings.setdefault(section, {})["output"] = str(job_folder)
    job = ws.jobs.submit(command, job_folder, settings)
    return job.as_dict(ws.root)


def dry_run(ws: Workspace, settings: dict) -> dict:
    settings = resolved(ws, "train", settings)
    settings["output"] = str(ws.root / RUNS / "dry-run")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dry-run.toml"
        path.write_text(to_toml(settings))
        result = subprocess.run([sys.executable, "-m", "trilora", "train", "--dry-run", "--config", str(path)],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("trilora: error:")]
    if result.returncode != 0:
        raise BadRequest(errors[0].removeprefix("trilora: error: ") if errors else "the estimate failed")
    return {"text": result.stdout}


def runs(ws: Workspace) -> list[dict]:
    return [describe_or_unreadable(ws.root, folder, ws.jobs.of(folder)) for folder in run_folders(ws.root)]


def run(ws: Workspace, name: str) -> dict:
    folder = run_folder(ws, name)
    return describe_run(ws.root, folder, ws.jobs.of(folder), detail=True)


def run_folder(ws: Workspace, name: str) -> Path:
    folder = inside(ws.root, f"{RUNS}/{name}")
    if folder.parent != (ws.root / RUNS).resolve() or not folder.is_dir():
        raise BadRequest(f"no run named {name!r}")
    return folder


def stop(ws: Workspace, name: str) -> dict:
    folder = run_folder(ws, name)
    if not ws.jobs.stop(folder, holder_process(folder)):
        raise BadRequest(f"run {name} is not running")
    return {"stopping": name}


def resume(ws: Workspace, name: str) -> dict:
    folder = run_folder(ws, name)
    if run(ws, name)["state"] != "interrupted":
        raise BadRequest(f"run {name} has nothing to resume (it is {run(ws, name)['state']})")
    return ws.jobs.submit("train", folder, None, ["--resume", str(folder)]).as_dict(ws.root)


def export_step(ws: Workspace, name: str, step: int) -> dict:
    """`trilora export RUN --step N` for a run of the workspace: its files, relative to the root."""
    # here, not at the top: the export reads adapters with torch, which the UI's other requests do not need
    from trilora.training.export import export_step as export_kept

    folder = run_folder(ws, name)
    if step < 0:
        raise BadRequest("give the step to export (one of the run's kept steps)")
    if ws.jobs.of(folder) is not None and ws.jobs.of(folder).state in ("running", "queued"):
        raise BadRequest(f"run {name} is still training: export a step when it has stopped")
    files = export_kept(folder, step)
    return {
        "step": step,
        "files": {k: str(Path(v).resolve().relative_to(ws.root.resolve())) for k, v in files.items()},
    }


def delete_run(ws: Workspace, name: str) -> dict:
    """Move a run that does not train to the workspace's trash (trash/NAME-TIME), freeing its name;
    nothing is unlinked: the folder is restored by moving it back."""
    folder = run_folder(ws, name)
    if run_state(folder, ws.jobs.of(folder)) in ("running", "queued"):
        raise BadRequest(f"run {name} is training: stop it first, then move it to the trash")
    trash = ws.root / TRASH
    trash.mkdir(exist_ok=True)
    target = trash / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 2
    while target.exists():
        target, n = trash / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}", n + 1
    os.rename(folder, target)
    return {"trashed": name, "to": str(target.relative_to(ws.root))}


def rename_run(ws: Workspace, name: str, new_name: str) -> dict:
    """Give a run that does not train another name: its folder moves, the absolute paths its files
    hold (config.json, summary.json, settings.toml, job.toml) follow it, and its exported files
    named after the run (NAME.safetensors, NAME-diffusers/, NAME-step-N...) take the new name, as a
    resumed run would write them. A run whose export name was chosen (export.name) keeps its files' names."""
    folder = run_folder(ws, name)
    if not isinstance(new_name, str) or not NAME.fullmatch(new_name):
        raise BadRequest(f"a run's name is letters, digits, '.', '_' and '-' (at most 64), got {new_name!r}")
    target = ws.root / RUNS / new_name
    if target.exists() or target.is_symlink():
        raise BadRequest(f"{RUNS}/{new_name} exists already: choose another name")
    if run_state(folder, ws.jobs.of(folder)) in ("running", "queued"):
        raise BadRequest(f"run {name} is training: stop it first, then rename it")
    config = read_json(folder / "config.json") or {}  # none: a run that failed before its set-up
    renamed = [] if config.get("export", {}).get("name") else [
        p for p in folder.iterdir() if p.name.startswith((f"{name}.", f"{name}-")) and not p.is_symlink()
    ]  # fmt: skip
    os.rename(folder, target)
    for path in renamed:
        os.rename(target / path.name, target / (new_name + path.name.removeprefix(name)))
    moves = [(str(folder / p.name), str(target / (new_name + p.name.removeprefix(name)))) for p in renamed]
    moves.append((str(folder), str(target)))  # after the files: their own paths are the longer prefixes
    for file in ("config.json", "summary.json"):  # an unreadable one is left as it is
        if (value := read_json(target / file)) is not None:
            write_json(target / file, moved(value, moves))
    for file in (SETTINGS, "settings.toml"):
        if (target / file).is_file():
            text = (target / file).read_text(encoding="utf-8")
            for old, new in moves:
                for end in ('"', "/"):  # the quoted path, alone or as a prefix (not runs/NAME-other)
                    text = text.replace(toml_value(old)[:-1] + end, toml_value(new)[:-1] + end)
            write_text(target / file, text)
    from trilora.formats.metadata import read_safetensors  # torch: only here
    from trilora.formats.metadata import renamed as renamed_metadata

    new_config = read_json(target / "config.json")
    for path in renamed:  # the exports' own titles (A1111's and ComfyUI's metadata views show them)
        new_path = target / (new_name + path.name.removeprefix(name))
        files = [new_path] if new_path.suffix == ".safetensors" else sorted(new_path.rglob("*.safetensors"))
        for file in files if not new_path.is_symlink() else []:
            if file.is_file() and not file.is_symlink():
                tensors, metadata = read_safetensors(file)
                save_safetensors(tensors, file, renamed_metadata(metadata, name, new_name, new_config))
    return {"renamed": name, "to": new_name}


def moved(value, moves: list[tuple[str, str]]):
    """`value` (JSON) with every path string under an old prefix put under its new one."""
    if isinstance(value, dict):
        return {k: moved(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [moved(v, moves) for v in value]
    if isinstance(value, str):
        for old, new in moves:
            if value == old or value.startswith(old + "/"):
                return new + value[len(old) :]
    return value


def job(ws: Workspace, job_id: int) -> dict:
    found = ws.jobs.jobs.get(job_id)
    if found is None:
        raise BadRequest(f"no job {job_id}")

    images = sorted(str(p.relative_to(ws.root)) for p in found.folder.rglob("*.png"))
    files = (
        sorted(str(p.relative_to(ws.root)) for p in found.folder.rglob("*.safetensors"))
        if found.command in TOOLS
        else []
    )
    reports = sorted(str(p.relative_to(ws.root)) for p in found.folder.glob("report.html"))
    lines = read_log(found.folder)
    errors = [line for line in lines if line.startswith("trilora: error:")]
    return found.as_dict(ws.root) | {"images": images, "reports": reports, "files": files, "log": log_tail(lines),
                                     "error": errors[-1] if errors else None,
                                     "log_file": str((found.folder / LOG).relative_to(ws.root))}  # fmt: skip


def results(ws: Workspace) -> list[dict]:
    """Test images, evaluation reports and the toolbox's files kept in the workspace (tests/NAME,
    reports/NAME, tools/NAME), newest first: what each job made, its prompts, its state (a job of
    this UI) or else what its files say."""
    found = []
    for kind in ("tests", "reports", "tools"):
        folder = ws.root / kind
        for job_folder in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []:
            if not job_folder.is_dir() or job_folder.is_symlink():
                continue
            settings = read_settings(job_folder / SETTINGS)
            images = sorted(job_folder.glob("*.png"))
            grid = job_folder / "grid.png"
            report = job_folder / "report.html"
            job = ws.jobs.of(job_folder)
            lines = read_log(job_folder)
            errors = [line for line in lines if line.startswith("trilora: error:")]
            files = sorted(job_folder.rglob("*.safetensors")) if kind == "tools" else []
            done = report.is_file() if kind == "reports" else bool(files) if kind == "tools" else bool(images)
            state = (
                job.state if job is not None else "finished" if done else "failed" if errors else "unfinished"
            )
            found.append({
                "kind": kind, "name": job_folder.name, "time": job_folder.stat().st_mtime, "state": state,
                "prompts": as_list(settings.get("generate", {}).get("prompt")),
                "lora": settings.get("generate", {}).get("lora") or settings.get("evaluate", {}).get("lora") or [],
                "images": [relative(ws.root, grid)] if grid.is_file() else [relative(ws.root, p) for p in images[:8]],
                "report": relative(ws.root, report) if report.is_file() else None,
                "files": [relative(ws.root, p) for p in files],
                "error": errors[-1] if errors else None,
                "log_file": relative(ws.root, job_folder / LOG) if (job_folder / LOG).is_file() else None,
            })  # fmt: skip
    return sorted(found, key=lambda r: -r["time"])[:MAX_LISTED]


def as_list(value) -> list:
    return [] if value in (None, "") else value if isinstance(value, list) else [value]


def read_settings(path: Path) -> dict:
    """A job's settings (job.toml) as a dict; {} when missing or unreadable."""
    try:
        return load_toml(path) if path.is_file() else {}
    except UserError:
        return {}


def presets(configs: Path | None, toy: dict) -> dict[str, dict]:
    """The toy-world demo's settings, then the example TOMLs of configs/ (when the repo is at hand),
    one per model family and goal, named by their first line ("A style LoRA for Stable Diffusion
    1.5"). Their paths are examples (models/..., datasets/...), not the workspace's: left out, so a
    preset keeps the base model and data the person already chose."""
    paths = {key for key, _, spec, _, _ in COMMANDS["train"].fields() if spec.metadata["path"]}
    found = {"Toy world: the demo's onion style (trains on a CPU)": toy}
    for path in sorted(configs.glob("*.toml")) if configs and configs.is_dir() else []:
        try:
            settings = {k: v for k, v in load_toml(path).items() if isinstance(v, dict)}
        except UserError:
            continue
        first = path.read_text(encoding="utf-8").split("\n", 1)[0].removeprefix("#").strip()
        label = re.split(r"[.:]\s|[.:]$", first, maxsplit=1)[0] or path.stem
        preset = {section: {k: v for k, v in values.items() if f"{section}.{k}" not in paths}
                  for section, values in settings.items()}  # fmt: skip
        if class_data := settings.get("data", {}).get("class_data"):  # made by the run when missing
            preset["data"]["class_data"] = f"data/{Path(class_data).name}"
        found[f"{label} ({path.stem})"] = preset
    return found
