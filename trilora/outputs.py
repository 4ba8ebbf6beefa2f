"""What may be written where: the one rule every command's outputs pass before any work.

- A name (`--name`, a report name, a UI job name) is a file name, never a path.
- An output never overlaps an input: not the same path, not inside it, not around it (a run in the
  data folder would train the next run on its own plots; a report in the reference folder would
  mix generated images with real ones).
- An output never lies in another command's folder (one holding `.trilora.lock`), except the
  command's own.
- A file is replaced only if the command wrote it (`replaceable`); anything else is refused.

Each check raises a one-line UserError that names both paths and what to do; none writes anything.
"""

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from trilora.errors import UserError
from trilora.run_folder import LOCK_NAME, read_record

NAME_MAX = 255  # bytes in one file name on every common file system (ext4, APFS, NTFS, tmpfs)
NAME_ROOM = 48  # bytes kept free for what trilora adds to a name: `-diffusers`, a temporary name's parts
FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")  # separators, controls, and what Windows forbids


def check_name(name: str, what: str) -> str:
    """`name` if it is a plain file name; else one line saying why it is not."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} must be a non-empty file name, got {name!r}")
    problem = None
    if FORBIDDEN.search(name):
        problem = "has a path separator or a character file names cannot hold"
    elif name in (".", "..") or name.startswith("."):
        problem = "starts with '.' (hidden or a path)"
    elif name != name.strip():
        problem = "starts or ends with a space"
    elif len(name.encode("utf-8")) > NAME_MAX - NAME_ROOM:
        problem = f"is longer than {NAME_MAX - NAME_ROOM} bytes (the file system allows {NAME_MAX} per name)"
    if problem:
        raise UserError(f"{what} {name!r} {problem}: a name is a file name, never a path; choose another")
    return name


def resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def overlap(a: Path, b: Path) -> str | None:
    """How `a` and `b` (resolved) overlap: "is", "is inside", "holds", or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "holds"
    return None


def refuse_overlaps(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Every output (flag -> path) against every input (flag -> path); None paths are left out."""
    ins = {
        flag: resolved(path) for flag, path in inputs.items() if path and Path(path).exists()
    }  # missing: later
    for out_flag, out_path in outputs.items():
        if not out_path:
            continue
        out = resolved(out_path)
        for in_flag, in_path in ins.items():
            how = overlap(out, in_path)
            if how:
                raise UserError(f"{out_flag} {out_path} {how} {in_flag} {in_path}: outputs never go into, "
                                f"around or onto inputs; choose an {out_flag} outside it")  # fmt: skip


def refuse_overlapping_inputs(inputs: dict[str, str | Path | None]) -> None:
    """Two inputs that must be apart (training and validation images): the same or nested is refused."""
    items = [(flag, resolved(path), path) for flag, path in inputs.items() if path]
    for i, (flag_a, a, shown_a) in enumerate(items):
        for flag_b, b, shown_b in items[i + 1 :]:
            how = overlap(a, b)
            if how:
                raise UserError(f"{flag_a} {shown_a} {how} {flag_b} {shown_b}: validation images must be "
                                "other images than the training ones; give separate folders")  # fmt: skip


def owning_folder(path: str | Path) -> Path | None:
    """The nearest folder at or above `path` that a trilora command claimed (holds `.trilora.lock`)."""
    path = resolved(path)
    for folder in [path, *path.parents]:
        if (folder / LOCK_NAME).is_file():
            return folder
    return None


def refuse_other_runs(outputs: dict[str, str | Path | None], own: str | Path | None = None) -> None:
    """No output inside a folder another command claimed; `own`: this command's own folder (it may
    be one already, when an earlier run of it is resumed or replaced)."""
    own = resolved(own) if own else None
    for flag, path in outputs.items():
        if not path:
            continue
        folder = owning_folder(path)
        if folder is None or (own is not None and (folder == own or own in folder.parents)):
            continue
        record = read_record(folder / LOCK_NAME) or {}
        holder = f" (written by `trilora {record['command']}`)" if record.get("command") else ""
        where = "is" if resolved(path) == folder else "is inside"
        raise UserError(f"{flag} {path} {where} the folder of another trilora run, {folder}{holder}; "
                        f"choose an {flag} outside it")  # fmt: skip


def refuse_foreign_files(targets: Iterable[Path], replaceable: Callable[[Path], bool], flag: str) -> None:
    """Each existing target must be a file this command wrote (`replaceable`); a folder, a link or
    anybody else's file is refused, naming it."""
    for target in targets:
        if not (target.exists() or target.is_symlink()):
            continue
        if target.is_symlink() or not target.is_file() or not replaceable(target):
            raise UserError(f"{flag}: {target} exists and was not written by this command; "
                            "move it away or choose another output")  # fmt: skip


def dataset_folders(dataset_config: str | None) -> dict[str, Path]:
    """The subset folders of a --dataset-config file (inputs like --data)."""
    if not dataset_config:
        return {}
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.data.subsets import load_dataset_config

    subsets = load_dataset_config(dataset_config)
    return {f"--dataset-config folder {i + 1}": s.folder for i, s in enumerate(subsets)}


def command_paths(command: str, tree) -> tuple[dict, dict, str | None]:
    """(outputs, inputs, its own folder) of a command, each output and input by its flag."""
    model = {"--base": tree.model.base, "--base-config": tree.model.base_config}
    if command == "train":
        data = tree.data
        inputs = model | {"--data": data.data, "--val-data": data.val_data, "--class-data": data.class_data,
                          "--dataset-config": data.dataset_config, "--clip-model": tree.validation.clip_model}  # fmt: skip
        return {"--output": tree.output}, inputs | dataset_folders(data.dataset_config), tree.output
    if command == "compare":
        data, ev = tree.data, tree.evaluate
        inputs = model | {"--data": data.data, "--val-data": data.val_data, "--class-data": data.class_data,
                          "--dataset-config": data.dataset_config, "--reference": ev.reference,
                          "--prompts": ev.prompts, "--inception-weights": ev.inception_weights,
                          "--clip-model": ev.clip_model}  # fmt: skip
        outputs = {"--output": ev.output, "--cache": ev.cache}
        return outputs, inputs | dataset_folders(data.dataset_config), ev.output
    if command == "evaluate":
        ev = tree.evaluate
        inputs = model | {"--reference": ev.reference, "--prompts": ev.prompts, "--inception-weights":
                          ev.inception_weights, "--clip-model": ev.clip_model}  # fmt: skip
        inputs |= {f"--lora {path}": path for path in ev.lora}
        return {"--output": ev.output, "--cache": ev.cache}, inputs, ev.output
    if command == "generate":
        specs = tree.generate.lora
        loras = {f"--lora #{i + 1}" if len(specs) > 1 else "--lora": spec if Path(spec).exists()
                 else spec.rpartition(":")[0] for i, spec in enumerate(specs)}  # fmt: skip
        return {"--output": tree.generate.output}, model | loras, None
    if command == "bench":
        return {"--output": tree.bench.output}, {"--base": tree.bench.base}, tree.bench.output
    if command == "demo":
        return {"--output": tree.demo.output}, {"--base": tree.demo.base}, tree.demo.output
    return {}, {}, None


def check_command_paths(command: str, tree) -> None:
    """The rule of this module for one command's settings, before it does anything."""
    outputs, inputs, own = command_paths(command, tree)
    refuse_overlaps(outputs, inputs)
    # a report's image cache may be another report's, by design: its entries are keyed by settings
    refuse_other_runs({flag: path for flag, path in outputs.items() if flag != "--cache"}, own)
    if command in ("train", "compare"):
        refuse_overlapping_inputs({"--data": tree.data.data, "--val-data": tree.data.val_data})
        refuse_overlapping_inputs({"--data": tree.data.data, "--class-data": tree.data.class_data})
        if tree.data.data and tree.data.dataset_config:
            raise UserError("--data and --dataset-config both name training images: give one (a dataset "
                            "config lists every folder)")  # fmt: skip
    if command in ("evaluate", "compare") and tree.evaluate.cache:
        refuse_foreign_cache(Path(tree.evaluate.cache))
    if command == "train" and tree.export.name is not None:
        check_name(tree.export.name, "--name")


CACHE_ENTRY = re.compile(r"[0-9a-f]{2}|metrics")  # an evaluation cache: key[:2]/KEY.png, metrics/KEY.json


def refuse_foreign_cache(cache: Path) -> None:
    """--cache is an evaluation's image cache, or new or empty: never a folder of someone's images."""
    if not cache.is_dir():
        return
    foreign = sorted(p.name for p in cache.iterdir() if not p.name.startswith(".") and not (
        p.is_dir() and CACHE_ENTRY.fullmatch(p.name)))  # fmt: skip
    if foreign:
        raise UserError(f"--cache {cache} holds files that are not an evaluation's image cache ({', '.join(foreign[:5])}); "
                        "give a new or empty folder, or another evaluation's cache")  # fmt: skip
