"""Every file trilora writes goes through here: a temporary file in the same folder, fsync, rename.

A crash, a kill or a full disk mid-write leaves the previous file intact (or no file), never a
truncated one: readers see the old file or the whole new one. The temporary name keeps the
extension (PIL and matplotlib pick the format from it) and starts with a dot, so that folder scans
skip a leftover one.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


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
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = PngInfo()
        for key, value in text.items():
            options["pnginfo"].add_itxt(key, value)
    with atomic_path(path) as temporary:
        image.save(temporary, **options)


def save_figure(figure, path: str | Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def torch_save(value, path: str | Path) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(value, temporary)
