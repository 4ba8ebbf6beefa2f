"""Image folders as people have them: images with same-named captions, kohya-style `N_name` repeats.

Scanning lists the files and reads the captions; `open_image` reads one image and raises
`BadImage` with the reason when it cannot be used. Both say what is wrong as a `Problem`, so
that `trilora check-data` and training report the same things in the same words.
"""

import hashlib
import io
import logging
import os
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from trilora.data.buckets import nearest_bucket
from trilora.errors import UserError
from trilora.seeds import derive_seed

log = logging.getLogger("trilora")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
MIN_IMAGES_FOR_VALIDATION = 5
MAX_CAPTION_BYTES = 1 << 20  # a caption is a line or a paragraph; anything larger is another file
MAX_REPEATS = 10000  # per image and epoch; beyond it a run's epoch list alone fills the memory
# Files a caption must never replace: images of any kind, and what trilora or a model folder reads
NOT_CAPTIONS = (*IMAGE_EXTENSIONS, ".gif", ".tif", ".tiff", ".avif", ".jxl", ".heic", ".heif", ".safetensors",
                ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".toml", ".json", ".csv", ".py", ".lock")  # fmt: skip
CAPTION_EXTENSION = re.compile(r"\.[A-Za-z0-9_-]{1,15}")
# Refuse images above this many pixels before decoding them: a small file can declare huge sides
# (a decompression bomb). Pillow warns above Image.MAX_IMAGE_PIXELS (89 Mpx) and refuses above
# twice that whatever this says; we leave Pillow's global alone and check our own, lower limit.
MAX_IMAGE_PIXELS = 8192 * 8192

# Problem kinds, with the words of the summary line that training logs.
UNUSABLE_KINDS = {
    "empty": "empty",
    "not-an-image": "not an image",
    "truncated": "truncated",
    "too-many-pixels": "too many pixels",
    "unreadable": "unreadable",
}
IMAGE_WARNING_KINDS = {
    "converted": "converted",
    "small": "smaller than half the resolution (upscaled)",
    "duplicate": "exact duplicate{s}",
}
CAPTION_KINDS = {
    "caption-missing": "missing",
    "caption-empty": "empty",
    "caption-not-utf8": "not UTF-8",
    "caption-unreadable": "unreadable",
}


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file: `kind` (one of the *_KINDS keys) to count, `reason` for people."""

    kind: str
    reason: str


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    repeats: int = 1
    is_reg: bool = False  # a regularisation (class) image of DreamBooth's prior preservation
    caption_problem: Problem | None = None  # a missing, empty or non-UTF-8 caption file
    # set when loaded: (original height, width, crop top, left in the resized image), what SDXL's
    # size conditioning says of the image (diffusers' train_text_to_image_sdxl semantics)
    crop: tuple[int, int, int, int] | None = None


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason, `kind` one of UNUSABLE_KINDS."""

    def __init__(self, reason: str, kind: str = "unreadable"):
        super().__init__(reason)
        self.kind = kind

    @property
    def problem(self) -> Problem:
        return Problem(self.kind, str(self))


@dataclass
class OpenedImage:
    image: Image.Image  # RGB, EXIF-rotated: its size is the size as displayed
    sha256: str  # of the file's bytes, to find exact duplicates
    problems: list[Problem]  # usable anyway: a conversion, a small image


def read_caption_checked(image: Path, extension: str = ".txt") -> tuple[str, Problem | None]:
    """The stripped text of `<image stem><extension>` ("" when missing) and what is wrong with it, if anything.

    Text that is not UTF-8 is decoded with replacement characters, so training can go on; a
    UTF-8 byte-order mark (Windows Notepad writes one) is dropped.
    """
    path = image.with_suffix(extension)
    if not path.is_file():
        return "", Problem("caption-missing", f"no caption file {path.name}")
    try:
        if path.stat().st_size > MAX_CAPTION_BYTES:
            return "", Problem("caption-unreadable", f"caption file {path.name} is over {MAX_CAPTION_BYTES >> 10} "
                               "KiB: not a caption")  # fmt: skip
        data = path.read_bytes()
    except OSError as error:
        return "", Problem(
            "caption-unreadable", f"caption file {path.name} cannot be read ({error.strerror})"
        )
    try:
        text, problem = data.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as error:
        text = data.decode("utf-8-sig", errors="replace").strip()
        problem = Problem(
            "caption-not-utf8",
            f"caption file {path.name} is not UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); "
            "undecodable bytes replaced by U+FFFD",
        )
    if not text and problem is None:
        problem = Problem("caption-empty", f"empty caption file {path.name}")
    return text, problem


def with_trigger(caption: str, trigger: str | None) -> str:
    if trigger:
        return f"{trigger}, {caption}" if caption else trigger
    return caption


def read_caption(image: Path, trigger: str | None = None, extension: str = ".txt") -> str:
    """The text of `<image stem><extension>` beside the image (empty if missing), with the trigger word in front."""
    return with_trigger(read_caption_checked(image, extension)[0], trigger)


def scan(folder: str | Path, trigger: str | None = None, caption_extension: str = ".txt") -> list[Item]:
    """Every image in `folder`; images in a subfolder named `N_name` repeat N times per epoch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder not found: {folder}; pass a folder of images with --data")
    check_caption_extension(caption_extension, "--caption-extension")
    items = []
    for path in files_under(folder):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file() or path.name.startswith("."):
            continue  # hidden files: macOS's ._ resource forks, a killed writer's .partial files
        repeats = 1
        for part in path.relative_to(folder).parts[:-1]:
            match = REPEAT_FOLDER.match(part)
            if match:
                repeats = int(match.group(1))
                if repeats > MAX_REPEATS:
                    raise UserError(f"{folder / part}: {repeats} repeats per epoch, more than {MAX_REPEATS}; "
                                    "rename the folder with fewer (or set repeats in a --dataset-config)")  # fmt: skip
        if repeats > 0:
            caption, problem = read_caption_checked(path, caption_extension)
            items.append(Item(path, with_trigger(caption, trigger), repeats, caption_problem=problem))
    if not items:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return items


def check_caption_extension(extension: str, flag: str) -> str:
    """A caption extension such as `.txt`: a dot and a short word, never one of an image or of a file
    trilora reads as something else (a caption written there would replace it)."""
    if not CAPTION_EXTENSION.fullmatch(extension):
        raise UserError(f'{flag} must be a dot and up to 15 letters, digits, "_" or "-", such as ".txt"; '
                        f"got {extension!r}")  # fmt: skip
    if extension.lower() in NOT_CAPTIONS:
        raise UserError(f"{flag} {extension} is the extension of images or model/settings files, which a "
                        'caption must never replace; use ".txt" or ".caption"')  # fmt: skip
    return extension


def files_under(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, following linked folders once; an unreadable subfolder is
    an error naming it, never skipped in silence."""

    def unreadable(error: OSError) -> None:
        raise UserError(f"cannot read the folder {error.filename}: {error.strerror}; fix its permissions "
                        "or move it out of the data folder")  # fmt: skip

    found, seen = [], set()
    for top, folders, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders[:] = []  # a link back up: a loop
            continue
        seen.add(real)
        found += [Path(top) / name for name in files]
    return sorted(found)


def open_image(path: Path, resolution: int) -> OpenedImage:
    """Decode an image file to EXIF-rotated RGB, or raise `BadImage` saying why it cannot be used.

    Truncated files are refused (Pillow's LOAD_TRUNCATED_IMAGES stays off: a half-grey image
    would be learned as it is). Modes other than RGB/L are converted and the conversion reported;
    an image whose shorter side is below resolution/2 is reported as small.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImage(f"cannot be read ({error.strerror or error})") from None
    if not data:
        raise BadImage("empty file (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = image_format(data)
        if kind:
            raise BadImage(f"a {kind} file that Pillow cannot read (a corrupt or cut-off header)") from None
        raise BadImage(f"not an image, despite its {path.suffix} extension", "not-an-image") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"too many pixels: {error}", "too-many-pixels") from None
    except Exception as error:  # Pillow raises many kinds on malformed headers: none is our bug
        raise BadImage(f"cannot be read as an image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"too many pixels: {width}x{height} is {width * height / 1e6:.0f} Mpx, above the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx (a guard against decompression bombs)",
            "too-many-pixels",
        )
    try:
        image.load()
    except Exception as error:
        if "truncated" in str(error):
            raise BadImage(f"truncated: the file ends before the image does ({error})", "truncated") from None
        raise BadImage(f"cannot be decoded as {image.format} ({type(error).__name__}: {error})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: use the pixels as stored
        pass
    try:
        image, conversion = to_rgb(image)
    except Exception as error:
        raise BadImage(f"mode {image.mode} cannot be converted to RGB ({error})") from None
    problems = [Problem("converted", conversion)] if conversion else []
    width, height = image.size
    if min(width, height) < resolution / 2:
        problems.append(
            Problem(
                "small",
                f"small: {width}x{height}, shorter side below half the resolution "
                f"({resolution / 2:g} px); upscaled for training",
            )
        )
    return OpenedImage(image, hashlib.sha256(data).hexdigest(), problems)


def image_format(data: bytes) -> str | None:
    """The format that a file's first bytes announce (for the formats we read), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith(b"BM") and len(data) >= 14 and int.from_bytes(data[2:6], "little") == len(data):
        return "BMP"  # its header's file size must match: "BM" alone starts too many text files
    return None


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """The image as 8-bit RGB, and what was converted (None when nothing worth saying was)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own convert clips 16-bit values to 255 instead of scaling them.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), "16-bit grayscale scaled to 8 bits"
    has_alpha = mode.endswith(("A", "a")) or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            source = "palette with transparency" if mode == "P" else f"{mode} alpha channel"
            return Image.alpha_composite(white, rgba).convert("RGB"), f"{source} composited on white"
        image = rgba  # every pixel opaque: dropping the alpha loses nothing
    if image.mode in ("RGB", "RGBA", "L", "1"):
        return image.convert("RGB"), None
    names = {"P": "palette", "CMYK": "CMYK", "F": "32-bit float"}
    return image.convert("RGB"), f"{names.get(mode, mode)} converted to RGB"


def cover(size: tuple[int, int], target: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """(the size an image of `size` (width, height) is resized to so that it covers `target`, the left
    and top of the centred crop to `target`)."""
    (width, height), scale = target, max(target[0] / size[0], target[1] / size[1])
    resized = (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))
    return resized, (resized[0] - width) // 2, (resized[1] - height) // 2


def to_pixels(image: Image.Image, resolution: int, bucket: tuple[int, int] | None = None) -> torch.Tensor:
    """Resized to cover `bucket` (width, height; default resolution square) and centre-cropped to it:
    (3, height, width) in [-1, 1]."""
    width, height = bucket or (resolution, resolution)
    size, left, top = cover(image.size, (width, height))
    image = image.resize(size, Image.Resampling.LANCZOS)
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, H, W)
    return pixels / 127.5 - 1.0


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF rotation applied) from the header alone; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # reported, with its reason, when the image is loaded
        return None
    return (height, width) if rotated else (width, height)


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """EXIF-rotated RGB, shorter side resized to `resolution`, centre-cropped: (3, R, R) in [-1, 1]."""
    return to_pixels(open_image(path, resolution).image, resolution)


def load_images(
    items: list[Item], resolution: int, buckets: list[tuple[int, int]] | None = None
) -> tuple[list[Item], list[torch.Tensor]]:
    """Load every item; returns the kept items and their pixels, each (3, R, R), or with `buckets`
    each (3, h, w) of the bucket nearest to the image's aspect ratio.

    Each kept item records its original size and crop (`Item.crop`). Each problem file is logged by name with the reason, as `trilora check-data` reports it:
    unusable images are skipped; converted, small and duplicate images and bad captions are used.
    A summary line counts them.
    """
    kept, pixels, counts = [], [], Counter()
    first_of_hash: dict[str, Path] = {}
    # A folder without caption files (trigger word only, as in DreamBooth) gets one line, not one per image.
    all_missing = len(items) > 1 and all(
        item.caption_problem and item.caption_problem.kind == "caption-missing" for item in items
    )
    if all_missing:
        log.warning("none of the %d images has a caption file: each trains on its trigger word alone "
                    "(or an empty caption)", len(items))  # fmt: skip
    for item in items:
        try:
            opened = open_image(item.image, resolution)
        except BadImage as error:
            log.warning("skipping %s: %s", item.image, error)
            continue
        bucket = nearest_bucket(*opened.image.size, buckets) if buckets else None
        _, left, top = cover(opened.image.size, bucket or (resolution, resolution))
        kept.append(replace(item, crop=(opened.image.height, opened.image.width, top, left)))
        pixels.append(to_pixels(opened.image, resolution, bucket))
        problems = list(opened.problems)
        original = first_of_hash.setdefault(opened.sha256, item.image)
        if original != item.image:
            problems.append(Problem("duplicate", f"an exact duplicate of {original}"))
        if item.caption_problem:
            problems.append(item.caption_problem)
        for problem in problems:
            if not (all_missing and problem.kind == "caption-missing"):
                log.warning("%s: %s", item.image, problem.reason)
            counts[problem.kind] += 1
    summary = summarise(len(items), len(kept), counts)
    if summary:
        log.warning("%s", summary)
    if not kept:
        raise UserError(f"none of the {len(items)} images could be read; see the messages above")
    return kept, pixels


def summarise(total: int, kept: int, counts: Counter) -> str | None:
    """One line of what went wrong, such as 'images: 9 of 12 used, 3 skipped as unusable, ...'."""

    def parts(kinds: dict[str, str]) -> list[str]:
        return [
            f"{counts[k]} {words.format(s='s' * (counts[k] > 1))}" for k, words in kinds.items() if counts[k]
        ]

    image_parts, caption_parts = parts(IMAGE_WARNING_KINDS), parts(CAPTION_KINDS)
    if kept == total and not image_parts and not caption_parts:
        return None
    line = f"images: {kept} of {total} used"
    if total - kept:
        line += f", {total - kept} skipped as unusable"
    line += "".join(f", {part}" for part in image_parts)
    if caption_parts:
        line += "; captions: " + ", ".join(caption_parts)
    return line


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
    random.Random(derive_seed(seed, "split")).shuffle(order)
    held = set(order[:count])
    train = [item for i, item in enumerate(items) if i not in held]
    val = [item for i, item in enumerate(items) if i in held]
    return train, val
