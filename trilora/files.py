"""Every file trilora writes goes through here: a temporary file in the same folder, fsync, rename.

A crash, a kill or a full disk mid-write leaves the previous file intact (or no file), never a
truncated one: readers see the old file or the whole new one. The temporary name keeps the
extension (PIL and matplotlib pick the format from it) and starts with a dot, so that folder scans
skip a leftover one.
"""

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from trilora.errors import UserError

STEM_BYTES = 100  # of the target's stem in a temporary name: `.STEM.xxxxxxxx.partial.EXT` stays under 255
# how safetensors and torch.save report a write that failed for want of space
WRAPPED_OUT_OF_SPACE = (
    "No space left",
    "os error 28",
    "Disk quota exceeded",
    "file write failed",
    "unexpected pos",
)
TEXT_LIMIT = 16 << 20  # settings, prompts, dataset configs: larger is a wrong file (or /dev/zero)


def short_stem(stem: str) -> str:
    data = stem.encode("utf-8")[:STEM_BYTES]
    return data.decode("utf-8", "ignore")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path` atomically.

    A full disk (or quota) is one line naming the file, the space it needed and where; the
    temporary file is removed and the previous `path` stays as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{short_stem(path.stem)}.", suffix=f".partial{path.suffix[:16]}"
        )
    except OSError as error:
        raise_if_out_of_space(error, path, None)
        raise
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    except OSError as error:
        raise_if_out_of_space(error, path, temporary)
        raise
    except Exception as error:  # safetensors and torch.save wrap the OSError of a full disk in their own
        if any(words in str(error) for words in WRAPPED_OUT_OF_SPACE):
            raise_if_out_of_space(OSError(errno.ENOSPC, str(error)), path, temporary)
        raise
    finally:
        temporary.unlink(missing_ok=True)


def raise_if_out_of_space(error: OSError, path: Path, temporary: Path | None) -> None:
    """A full disk or quota as a UserError saying which file, how much it needed and how much is free."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    written = temporary.stat().st_size if temporary is not None and temporary.exists() else 0
    if temporary is not None:
        temporary.unlink(missing_ok=True)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    needed = f"{written / 2**20:.1f} MiB written before it ran out" if written else "no room even to start"
    raise UserError(f"the disk is full: cannot write {path} ({needed}; {free / 2**20:.1f} MiB free on "
                    f"{path.parent}); free some space and run again (nothing was half-written)") from None  # fmt: skip


def check_regular_file(path: str | Path, what: str, limit: int | None = None) -> Path:
    """`path` if it is a regular file (not a FIFO, a device or a folder) of at most `limit` bytes."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file (a pipe or a device); give a file")
    if limit is not None and info.st_size > limit:
        raise UserError(f"{what} {path} is {info.st_size / 2**20:.1f} MiB, more than such a file can be "
                        f"({limit / 2**20:.0f} MiB); is it the right file?")  # fmt: skip
    return path


def read_text_file(path: str | Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """A small UTF-8 text file, checked first (regular, at most `limit` bytes); one line if not."""
    path = check_regular_file(path, what, limit)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
        return data[:limit].decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text; is it the right file?") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def hash_file(path: str | Path, digest=None):
    """Feed a file's bytes to `digest` (a new sha256 if None) a megabyte at a time; the digest."""
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def save_image(image, path: str | Path, text: dict[str, str] | None = None, **options) -> None:
    """A PIL image; the format comes from the extension of `path`; `text`: PNG text chunks."""
    if text:
        options["pnginfo"] = PngInfo()
        for key, value in text.items():
            options["pnginfo"].add_itxt(key, value)
    with atomic_path(path) as temporary:
        image.save(temporary, **options)


def save_figure(figure, path: str | Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def torch_save(value, path: str | Path) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    import torch

    with atomic_path(path) as temporary:
        torch.save(value, temporary)
