"""Several image folders in one run (`--dataset-config FILE`), in the spirit of kohya's dataset config.

The file is TOML with one `[[subsets]]` table per folder:

```toml
[[subsets]]
folder = "img/style"         # required; relative to this file's folder
repeats = 10                 # optional; overrides N_name folder repeats
trigger = "mystyle"          # optional; put first in every caption of this subset
caption_extension = ".txt"   # optional; captions are <image stem><caption_extension>

[[subsets]]
folder = "img/class"
is_reg = true                # optional; regularisation (class) images of prior preservation
```

Any other key is an error that names it. This is our own, flatter layout: kohya's file nests
subsets in `[[datasets]]` and calls the keys `image_dir`, `num_repeats` and `class_tokens`; the
error for those names says what to write instead.
"""

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from trilora.data.folder import MAX_REPEATS, Item, check_caption_extension, scan
from trilora.errors import UserError
from trilora.files import read_text_file

# kohya's names for our keys, for the error message of someone who copies a kohya file.
KOHYA_KEYS = {"image_dir": "folder", "num_repeats": "repeats", "class_tokens": "trigger"}


@dataclass(frozen=True)
class Subset:
    folder: Path
    """Folder of images with same-named captions (subfolders are scanned too)."""
    repeats: int | None = None
    """Times each image is seen per epoch; None keeps the repeats of `N_name` subfolders (else 1)."""
    trigger: str | None = None
    """Word put first in every caption of this subset (kohya's `class_tokens`)."""
    caption_extension: str = ".txt"
    """Captions are read from `<image stem><caption_extension>` beside each image."""
    is_reg: bool = False
    """Regularisation (class) images of DreamBooth's prior preservation, not images to learn."""

    def __post_init__(self):
        if not isinstance(self.folder, str | Path):
            raise UserError(f"folder must be a path string, got {self.folder!r}")
        object.__setattr__(self, "folder", Path(self.folder))
        if self.repeats is not None and (
            isinstance(self.repeats, bool)
            or not isinstance(self.repeats, int)
            or not 1 <= self.repeats <= MAX_REPEATS
        ):
            raise UserError(f"repeats must be a whole number in 1..{MAX_REPEATS}, got {self.repeats!r}")
        if self.trigger is not None and not isinstance(self.trigger, str):
            raise UserError(f"trigger must be a string, got {self.trigger!r}")
        if not isinstance(self.caption_extension, str):
            raise UserError(
                f'caption_extension must be a string such as ".txt", got {self.caption_extension!r}'
            )
        check_caption_extension(self.caption_extension, "caption_extension")
        if not isinstance(self.is_reg, bool):
            raise UserError(f"is_reg must be true or false, got {self.is_reg!r}")


def load_dataset_config(path: str | Path) -> list[Subset]:
    """The subsets of a dataset TOML file, validated; relative folders resolve against the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text_file(path, "dataset config"))
    except RecursionError:
        raise UserError(f"dataset config {path} nests deeper than any dataset config does") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"dataset config {path} is not valid TOML: {error}") from None

    unknown = [key for key in data if key != "subsets"]
    if unknown:
        hint = "; put [[subsets]] at the top level, not inside [[datasets]]" if "datasets" in data else ""
        raise UserError(
            f"{path}: unknown key(s) {', '.join(unknown)}; only [[subsets]] tables are read{hint}"
        )
    tables = data.get("subsets")
    if not isinstance(tables, list) or not tables:
        raise UserError(f"{path}: no subsets; add at least one [[subsets]] table with a folder")

    known = {field.name for field in fields(Subset)}
    subsets = []
    for number, table in enumerate(tables, start=1):
        where = f"{path}, subset {number}"
        if not isinstance(table, dict):
            raise UserError(f'{where}: must be a [[subsets]] table (folder = "..."), got {table!r}')
        unknown = [key for key in table if key not in known]
        if unknown:
            hints = [f"{key} -> {KOHYA_KEYS[key]}" for key in unknown if key in KOHYA_KEYS]
            hint = f" (write {', '.join(hints)})" if hints else ""
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}{hint}; known keys: {', '.join(sorted(known))}"
            )
        if "folder" not in table:
            raise UserError(f'{where}: no folder; every [[subsets]] table needs folder = "..."')
        try:
            subset = Subset(**table)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        folder = path.parent / subset.folder.expanduser()
        if not folder.is_dir():
            raise UserError(f"{where}: folder not found: {folder}")
        subsets.append(replace(subset, folder=folder))

    if all(subset.is_reg for subset in subsets):
        raise UserError(f"{path}: every subset is is_reg = true; add a subset of images to learn")
    return subsets


def scan_subsets(subsets: list[Subset]) -> list[Item]:
    """The images of every subset, with that subset's trigger, caption extension, repeats and is_reg."""
    items = []
    for subset in subsets:
        for item in scan(subset.folder, subset.trigger, subset.caption_extension):
            items.append(replace(item, repeats=subset.repeats or item.repeats, is_reg=subset.is_reg))
    return items
