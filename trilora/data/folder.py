"""Image folders as people have them: images with same-named captions, kohya-style `N_name` repeats.

Scanning only lists files; `load_image` reads one and raises `BadImage` with the reason when it
cannot, so that the caller can skip it and say so.
"""

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trilora.errors import UserError

log = logging.getLogger("trilora")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
MIN_IMAGES_FOR_VALIDATION = 5


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    repeats: int = 1
    is_reg: bool = False  # a regularisation (class) image of DreamBooth's prior preservation


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason."""


def read_caption(image: Path, trigger: str | None = None, extension: str = ".txt") -> str:
    """The text of `<image stem><extension>` beside the image (empty if missing), with the trigger word in front."""
    path = image.with_suffix(extension)
    caption = ""
    if path.is_file():
        caption = path.read_text(encoding="utf-8", errors="replace").strip()
    if trigger:
        caption = f"{trigger}, {caption}" if caption else trigger
    return caption


def scan(folder: str | Path, trigger: str | None = None, caption_extension: str = ".txt") -> list[Item]:
    """Every image in `folder`; images in a subfolder named `N_name` repeat N times per epoch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder not found: {folder}; pass a folder of images with --data")
    items = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        repeats = 1
        for part in path.relative_to(folder).parts[:-1]:
            match = REPEAT_FOLDER.match(part)
            if match:
                repeats = int(match.group(1))
        if repeats > 0:
            items.append(Item(path, read_caption(path, trigger, caption_extension), repeats))
    if not items:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return items


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """EXIF-rotated RGB, shorter side resized to `resolution`, centre-cropped: (3, R, R) in [-1, 1]."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (decompression bomb guard)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImage(f"cannot be read as an image ({error})") from None
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, R, R)
    return pixels / 127.5 - 1.0


def load_images(items: list[Item], resolution: int) -> tuple[list[Item], torch.Tensor]:
    """Load every item; unreadable files are logged by name and skipped. Returns the kept items."""
    kept, pixels, skipped = [], [], []
    for item in items:
        try:
            pixels.append(load_image(item.image, resolution))
            kept.append(item)
        except BadImage as error:
            skipped.append(item.image)
            log.warning("skipping %s: %s", item.image, error)
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", len(skipped), len(items))
    if not kept:
        raise UserError(f"none of the {len(items)} images could be read; see the messages above")
    return kept, torch.stack(pixels)


def split_validation(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Hold out `fraction` of the images (at least one) for validation, chosen with the seed.

    With fewer than 5 images there is no validation set: every image is needed for training.
    """
    if fraction <= 0:
        return items, []
    if len(items) < MIN_IMAGES_FOR_VALIDATION:
        log.warning(
            "only %d images: no validation set, so no early stopping and the last step is exported; "
            "add images or pass --val-data DIR",
            len(items),
        )
        return items, []
    count = max(1, round(len(items) * fraction))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    train = [item for i, item in enumerate(items) if i not in held]
    val = [item for i, item in enumerate(items) if i in held]
    return train, val
