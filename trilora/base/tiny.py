"""Tiny random-weight pipelines of each model family, for tests, benchmarks and the first demo, and a
dataset of coloured shapes to train them on.

Same classes and wiring as the family's real models (for SD 1.x: AutoencoderKL, CLIPTextModel with
the real CLIP tokenizer, UNet2DConditionModel with cross-attention, the SD noise schedule), only
narrower and shallower, so that one builds in a second and trains on a CPU.
"""

import random
from pathlib import Path

from PIL import Image, ImageDraw

from trilora.families.registry import named
from trilora.files import save_image, write_text

TINY_RESOLUTION = 32  # pixels; the VAE downsamples by 4 to 8x8 latents


def build_tiny_pipeline(seed: int = 0, family: str = "sd1"):
    """A random-weight pipeline of `family`, identical for identical seeds."""
    return named(family).tiny(seed)


def save_tiny_pipeline(path: str | Path, seed: int = 0, family: str = "sd1") -> Path:
    """Write a tiny pipeline as a diffusers folder (model_index.json and one folder per part)."""
    path = Path(path)
    build_tiny_pipeline(seed, family).save_pretrained(path, safe_serialization=True)
    return path


SHAPE_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
}
SHAPES = ("circle", "square")


def make_shapes_dataset(folder: Path, count: int = 24, size: int = TINY_RESOLUTION, seed: int = 0) -> Path:
    """`count` images of one coloured shape on a light background, each with a caption .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        colour, shape = rng.choice(sorted(SHAPE_COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size * 4, size * 4), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        radius = rng.randint(size, size * 3 // 2)
        cx, cy = rng.randint(radius, size * 4 - radius), rng.randint(radius, size * 4 - radius)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=SHAPE_COLOURS[colour])
        save_image(image.resize((size, size), Image.Resampling.BOX), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", f"a {colour} {shape}")
    return folder
