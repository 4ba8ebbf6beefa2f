"""A run as the UI shows it, read back from its folder (so runs survive a restart of the UI and
runs started in a terminal show too): state, curves, best step, samples, exports, progress, log."""

import json
import re
from pathlib import Path

from trilora.formats.native import adapter_info
from trilora.run_folder import FolderLock, read_record
from trilora.training.checkpoint import list_checkpoints
from trilora.training.export import kept_steps
from trilora.training.metrics import read_metrics
from trilora.training.sheet import SHEET_FILE
from trilora.ui.jobs import LOG, SETTINGS

RUNS = "runs"
LOG_LINES = 40
RATE_STEPS = 50  # the ETA follows the rate over the last this many steps
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"^(?P<what>[^|]*?):?\s*\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")  # tqdm's line


def run_folders(root: Path) -> list[Path]:
    folder = root / RUNS
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and ((p / "config.json").exists() or (p / SETTINGS).exists())
    )


def read_json(path: Path) -> dict | None:
    """A run's JSON file as a dict; None if missing, unreadable, not JSON or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def describe_or_unreadable(root: Path, folder: Path, job=None, detail: bool = False) -> dict:
    """`describe_run`, or, for a folder whose files are damaged (a hand edit, a foreign file), a row
    that says so: one broken run never empties the list."""
    try:
        return describe_run(root, folder, job, detail)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as error:
        return {"name": folder.name, "state": "unreadable", "error": f"{type(error).__name__}: {error}"[:200],
                "method": None, "rank": None, "step": 0, "total_steps": None, "eta_s": None, "best_step": None,
                "best_val_loss": None, "exported": {}}  # fmt: skip


def read_log(folder: Path) -> list[str]:
    """The end of the run's log as lines: colour codes removed, a line rewritten by carriage returns
    (a progress bar) kept in its last state."""
    try:
        text = (folder / LOG).read_bytes()[-20000:].decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = (
        ANSI.sub("", line.replace("\r\n", "\n").rstrip("\r").rsplit("\r", 1)[-1]) for line in text.split("\n")
    )
    return [line.rstrip() for line in lines if line.strip()]


def log_tail(lines: list[str], count: int = LOG_LINES) -> str:
    """The log without progress bars (the phase line shows the latest one)."""
    return "\n".join([line for line in lines if not BAR.match(line)][-count:])


def phase(lines: list[str]) -> str | None:
    """What a running run is doing now, from its latest log line: a progress bar as `what n/N`, else
    the line itself (loading the base model, caching, validating, step n/N ...)."""
    if not lines:
        return None
    if bar := BAR.match(lines[-1]):
        return f"{bar['what'].strip() or 'working'} {bar['done']}/{bar['total']}"
    return lines[-1].removeprefix("trilora: ")


def stop_on(summary: dict, config: dict, validations: list[dict]) -> str | None:
    """What stopping follows: the finished run's summary says; while it trains, `auto` follows the
    generation signal exactly when a scorer was found, i.e. when the signal has values."""
    if summary.get("stop_on"):
        return summary["stop_on"]
    asked = config.get("validation", {}).get("stop_on")
    if asked in ("auto", "generation") and any(v.get("signal") is not None for v in validations):
        return "generation"
    return "val_loss" if asked == "auto" and validations else asked


def eta_seconds(rows: list[dict], total: int | None) -> float | None:
    """Seconds to `total` steps at the recent rate (the last RATE_STEPS steps, validations included:
    they recur), not the average since the start, which holds the set-up and the first validation."""
    timed = [r for r in rows if r.get("elapsed_s") is not None]
    if not total or len(timed) < 2:
        return None
    first = next(r for r in timed if r["step"] >= timed[-1]["step"] - RATE_STEPS)
    if first is timed[-1]:
        first = timed[-2]
    steps, seconds = timed[-1]["step"] - first["step"], timed[-1]["elapsed_s"] - first["elapsed_s"]
    return max(0.0, seconds / steps * (total - timed[-1]["step"])) if steps > 0 and seconds >= 0 else None


def run_state(folder: Path, job) -> str:
    """running, queued, finished, stopped early, interrupted (a checkpoint to resume from) or failed."""
    if FolderLock(folder, "ui").holder() is not None or (job is not None and job.state == "running"):
        return "running"
    if job is not None and job.state == "queued":
        return "queued"
    summary = read_json(folder / "summary.json")
    if summary is not None and summary.get("exported") and not summary.get("interrupted_by"):
        return "stopped early" if summary.get("stopped_early") else "finished"
    if list_checkpoints(folder):
        return "interrupted"  # Stop (or Ctrl-C) exported the best so far; Resume goes on
    return "failed" if job is None or job.state in ("failed", "stopped", "finished") else job.state


def describe_run(root: Path, folder: Path, job=None, detail: bool = False) -> dict:
    config = read_json(folder / "config.json") or {}
    state = run_state(folder, job)
    # a resumed run's summary is of its earlier stop: while it trains, the files tell
    summary = (read_json(folder / "summary.json") or {}) if state != "running" else {}
    rows = read_metrics(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else []
    validations = [r for r in rows if r.get("val_loss") is not None]
    best = summary.get("best_step")
    if best is None:  # while it trains: the step of the best adapter so far, as stopping chose it
        best = (adapter_info(folder / "best" / "adapter.safetensors") or {}).get("step")
    train = config.get("train", {})
    total = train.get("steps")
    step = rows[-1]["step"] if rows else 0
    eta = eta_seconds(rows, total)
    described = {
        "name": folder.name,
        "state": state,
        "method": config.get("adapter", {}).get("method"),
        "rank": config.get("adapter", {}).get("rank"),
        "step": step,
        "total_steps": total,
        "eta_s": eta,
        "best_step": best,
        "best_val_loss": summary.get("best_val_loss"),
        "exported_step": summary.get("exported_step"),
        "exported": {
            k: relative(root, Path(v))
            for k, v in summary.get("exported", {}).items()
            if inside_root(root, Path(v))
        },
    }
    if detail:
        by_step = {r["step"]: r for r in validations}
        record = read_record(folder / ".trilora.lock") if described["state"] == "running" else None
        described |= {
            "train": [
                {"step": r["step"], "loss": r["train_loss"]} for r in rows if r.get("train_loss") is not None
            ],
            "val": [
                {
                    "step": r["step"],
                    "loss": r["val_loss"],
                    "se": r.get("val_loss_se"),
                    "signal": r.get("signal"),
                }
                for r in validations
            ],
            "stop_on": stop_on(summary, config, validations),
            "sample_prompts": list(
                config.get("validation", {}).get("sample_prompt") or []
            ),  # image k: prompt k
            "samples": [
                {
                    "step": int(s.name.removeprefix("step-")),
                    "images": [str(p.relative_to(root)) for p in sorted(s.glob("*.png"))],
                }
                for s in sorted((folder / "samples").glob("step-*"))
                if s.name.removeprefix("step-").isdigit()
            ],  # fmt: skip
            "checkpoints": len(list_checkpoints(folder)),
            # the contact sheet (its mtime: the page reloads it when it changes) and the steps it can export
            "sheet": relative(root, folder / SHEET_FILE) if (folder / SHEET_FILE).is_file() else None,
            "sheet_version": int((folder / SHEET_FILE).stat().st_mtime)
            if (folder / SHEET_FILE).is_file()
            else None,
            "kept": [
                {
                    "step": k,
                    "val_loss": by_step.get(k, {}).get("val_loss"),
                    "signal": by_step.get(k, {}).get("signal"),
                }
                for k in kept_steps(folder)
            ],  # fmt: skip
            "step_exports": {
                step: {k: relative(root, Path(v)) for k, v in files.items() if inside_root(root, Path(v))}
                for step, files in (summary.get("step_exports") or {}).items()
                if isinstance(files, dict)
            },  # fmt: skip
            "log": log_tail(lines := read_log(folder)),
            "phase": phase(lines) if described["state"] == "running" else None,
            "pid": (record or {}).get("pid"),
        }
    return described


def inside_root(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def relative(root: Path, path: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))
