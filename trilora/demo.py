"""`trilora demo`: the whole path on a machine with no model at all.

A tiny random-weight SD-shaped model and a small generated image set (coloured shapes with
captions), trained for about a minute on a CPU with validation-driven stopping, exported, and used
to generate images before and after. It only proves the plumbing: a random base model makes no
meaningful pictures.
"""

import logging
import random
from pathlib import Path

from PIL import Image, ImageDraw

from trilora.base.tiny import TINY_RESOLUTION, save_tiny_pipeline
from trilora.config import RunConfig, from_dict

log = logging.getLogger("trilora")

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}
SHAPES = ("circle", "square")


def make_shapes_dataset(folder: Path, count: int = 24, size: int = TINY_RESOLUTION, seed: int = 0) -> Path:
    """`count` images of one coloured shape on a light background, each with a caption .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size * 4, size * 4), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        radius = rng.randint(size, size * 3 // 2)
        cx, cy = rng.randint(radius, size * 4 - radius), rng.randint(radius, size * 4 - radius)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        image.resize((size, size), Image.Resampling.BOX).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {colour} {shape}")
    return folder


def demo_config(output: Path, steps: int) -> RunConfig:
    return from_dict(
        {
            "output": str(output / "run"),
            "model": {"base": str(output / "base")},
            "data": {"data": str(output / "data"), "resolution": TINY_RESOLUTION, "val_fraction": 0.2},
            "adapter": {"method": "trilora", "rank": 4},
            "train": {"lr": 1e-3, "batch_size": 4, "steps": steps, "seed": 0},
            "validation": {
                "validate_every": 20,
                "patience": 5,
                "sample_prompt": ["a red circle"],
                "sample_steps": 10,
            },
            "export": {"name": "demo"},
        },
        source="demo",
    )


def run_demo(output: str | Path, steps: int = 300) -> dict:
    from trilora.base.load import load_pipeline
    from trilora.inference.generate import generate, load_adapters
    from trilora.training.loop import train

    output = Path(output)
    log.info("demo: writing a tiny random-weight base model and a shapes data set to %s", output)
    save_tiny_pipeline(output / "base")
    make_shapes_dataset(output / "data")
    summary = train(demo_config(output, steps))

    pipe = load_pipeline(output / "base")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(steps=10, height=TINY_RESOLUTION, width=TINY_RESOLUTION, num_images=4)
    before = generate(pipe, "a red circle", **kwargs)
    load_adapters(pipe, [(Path(summary["exported"]["kohya"]), 1.0)])
    after = generate(pipe, "a red circle", **kwargs)
    grid = image_grid([before, after])
    grid.save(output / "before_after.png")
    print(f"demo finished: best step {summary['best_step']} of {summary['steps_run']}")
    print(f"  run folder:   {output / 'run'}  (metrics.csv, loss.png, summary.json, samples/)")
    print(f"  adapter:      {summary['exported']['kohya']}")
    print(f"  before/after: {output / 'before_after.png'} (top: base model, bottom: with the adapter)")
    return summary


def image_grid(rows: list[list[Image.Image]], scale: int = 4) -> Image.Image:
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * scale * len(rows[0]), height * scale * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            big = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
            grid.paste(big, (c * width * scale, r * height * scale))
    return grid
