"""What `trilora evaluate` reads: prompts, reference images and the list of strengths."""

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trilora.errors import UserError
from trilora.files import read_text_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, sorted, skipping hidden files and folders (.cache, .DS_Store, ...)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_prompts(path: str | Path, caption_extension: str = ".txt") -> list[str]:
    """One prompt per non-empty line of a text file, or one per caption file in a folder (a training set)."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in _visible_files(path) if p.suffix == caption_extension]
        prompts = [" ".join(p.read_text(encoding="utf-8").split()) for p in files]
    elif path.is_file():
        prompts = [line.strip() for line in read_text_file(path, "prompts file").splitlines()]
    else:
        raise UserError(
            f"prompts not found: {path}; give a text file (one prompt a line) or a captions folder"
        )
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(
            f"no prompts in {path}: give a text file with one prompt a line or a folder of {caption_extension} captions"
        )
    return prompts


def reference_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (sorted); at least 2, as FID and KID need."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"reference folder not found: {folder}; give a folder of real images")
    files = [p for p in _visible_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(files) < 2:
        raise UserError(
            f"{folder} has {len(files)} images; FID and KID need at least 2 reference images (ideally 50+)"
        )
    return files


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None
