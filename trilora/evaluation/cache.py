"""The disk cache of an evaluation: one PNG per generated image, named by a hash of everything that made
it, and one JSON file of metrics per row, named by a hash of its images, the reference images and the
metric settings.

A rerun, an added strength or an added prompt generates only the images whose key is new, and scores
only the rows whose images changed. An image's key
covers the base model's files (path, size and modification time: hashing gigabytes on every run would
cost more than it saves), the adapter's content (hashed: adapter files are small and often
overwritten in place by a new training run), the strength, the prompt, the seed, the image's index,
the steps, the guidance, the size, the scheduler, the device type and the dtype.
"""

import hashlib
import json
import math
from pathlib import Path

from PIL import Image

from trilora.files import hash_file, save_image, write_text

KEY_VERSION = 1  # bump when the generation code changes what a key's image looks like


def file_identity(path: str | Path) -> list:
    """(relative path, size, mtime in ns) of a file, or of every file under a folder, sorted."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    identity = [str(path)]
    for file in files:
        stat = file.stat()
        identity.append(
            [str(file.relative_to(path)) if path.is_dir() else file.name, stat.st_size, stat.st_mtime_ns]
        )
    return identity


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of every file under a folder with its relative path."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        hash_file(file, digest)
    return digest.hexdigest()


def settings_key(**settings) -> str:
    """A hex key of settings (JSON values): of everything that affects one image, or one row's metrics."""
    text = json.dumps({"version": KEY_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class ImageCache:
    """PNG files under `folder`/<first two hex digits>/<key>.png and metrics under `folder`/metrics/<key>.json,
    written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Image.Image:
        with Image.open(self.path(key)) as image:
            return image.convert("RGB")

    def put(self, key: str, image: Image.Image) -> None:
        save_image(image, self.path(key))  # a run killed mid-write leaves no half image under the key

    def metrics_path(self, key: str) -> Path:
        return self.folder / "metrics" / f"{key}.json"

    def get_metrics(self, key: str) -> dict | None:
        path = self.metrics_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put_metrics(self, key: str, metrics: dict) -> None:
        if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
            return  # a NaN is not worth keeping: score the row again next time
        write_text(self.metrics_path(key), json.dumps(metrics))
