"""Full training state for exact resume: written atomically, found again, checked for compatibility.

A checkpoint is a folder `OUTPUT/checkpoints/step-NNNNNN/` holding `state.pt`: a plain dict
(nanoGPT style) of adapter factors, optimizer state, step, early-stopping counters, the best adapter
so far, the metrics rows so far and the resolved config. Noise, timesteps and data order are functions of the seed and
the step (training/noise.py, data/order.py), so no random-generator state is needed.
"""

import json
import re
import shutil
import signal
from pathlib import Path

import torch

from trilora.config import resumable_keys
from trilora.errors import UserError
from trilora.files import check_regular_file, torch_save

# Settings that may change on resume without breaking bit-exact continuation (declared in the tree).
RESUMABLE_CHANGES = resumable_keys()


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(output: Path, step: int, state: dict, keep: int) -> Path:
    """Write to a temporary folder, then rename: a crash mid-write leaves earlier checkpoints intact."""
    final = checkpoint_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch_save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(output)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output: Path) -> list[Path]:
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(path: str | Path) -> Path:
    """`OUTPUT` (its latest checkpoint) or `OUTPUT/checkpoints/step-N` itself."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise UserError(
            f"no checkpoint to resume from in {path}: give a run's output folder or its checkpoints/step-N"
        )
    return found[-1]


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to: OUTPUT for OUTPUT/checkpoints/step-N."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


REQUIRED_KEYS = ("step", "adapter", "optimizer", "stopper", "best_state", "config", "data")


def load_checkpoint(path: Path) -> dict:
    """The state dict of `path`/state.pt, read with torch's weights-only loader: a file that holds
    anything but tensors and plain containers (a pickle that would run code) is refused, not run."""
    file = check_regular_file(Path(path) / "state.pt", "checkpoint")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        kind = "it holds objects other than tensors" if "Weights only load failed" in str(error) else (
            f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else 'damaged'}")  # fmt: skip
        raise UserError(f"cannot read checkpoint {file}: not a trilora training state ({kind}); "
                        "resume from another checkpoint of the run") from None  # fmt: skip
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["config"], dict) or not isinstance(state["step"], int):
        raise UserError(f"cannot read checkpoint {file}: not a trilora training state "
                        f"(missing {', '.join(missing) or 'a valid step or config'}); resume from another checkpoint")  # fmt: skip
    for section, values in ADDED_SETTINGS.items():  # a run started before these existed ran as they say
        for key, value in values.items():
            state["config"].setdefault(section, {}).setdefault(key, value)
    return state


# Settings added after runs were checkpointed, with the value that describes how those runs ran
# (before --stop-on existed, stopping followed the validation loss).
ADDED_SETTINGS = {
    "validation": {"stop_on": "val_loss", "signal_prompt": [], "clip_model": None, "stop_window": 1}
}


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def incompatible_changes(saved: dict, new: dict) -> list[str]:
    """Settings that differ between the checkpoint's config and the new one and would break resume."""
    saved, new = flatten(saved), flatten(new)
    keys = sorted(set(saved) | set(new))
    return [
        f"{k}: {saved.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if k not in RESUMABLE_CHANGES and saved.get(k) != new.get(k)
    ]


def refuse_edited_config(folder: Path, saved: dict) -> None:
    """Resume takes the run's settings from its checkpoint; a config.json edited by hand since would be
    ignored in silence, so it is refused, naming what differs."""
    try:
        written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise UserError(f"{folder / 'config.json'} cannot be read ({error}); restore it from the checkpoint's "
                        "settings or delete it: resume takes the settings from the checkpoint") from None  # fmt: skip
    changed = incompatible_changes(saved, written) if isinstance(written, dict) else ["not a JSON object"]
    added = {f"{section}.{key}" for section, values in ADDED_SETTINGS.items() for key in values}
    changed = [change for change in changed if change.split(":")[0] not in added]  # filled in for old runs
    if changed:
        raise UserError(f"{folder / 'config.json'} was edited since the checkpoint ({'; '.join(changed[:3])}): resume "
                        "takes the run's settings from the checkpoint, so undo the edit (or delete config.json) and "
                        "give a change that resume allows as a flag, e.g. --steps")  # fmt: skip


class StopRequest:
    """Ctrl-C, SIGTERM or SIGHUP (what SLURM, Kubernetes and a closed terminal send) during training
    set `requested`: the loop finishes its step, checkpoints and exits. A second signal interrupts at once."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __enter__(self) -> "StopRequest":
        self.requested, self.signum, self.previous = False, signal.SIGINT, {}
        try:
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def _handle(self, number, _frame) -> None:
        self.requested, self.signum = True, number
        self._restore()

    def _restore(self) -> None:
        for number, previous in self.previous.items():
            signal.signal(number, previous)
        self.previous = {}

    def __exit__(self, *_) -> None:
        self._restore()
