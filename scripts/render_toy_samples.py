"""Write a contact sheet of toy-world renders for a person to look at.

python scripts/render_toy_samples.py [--size 32] [--scale 4] [--output runs/toy_samples.png]

One row per style (the unseen styles last, their labels marked *); the columns go through the
colours, floors and times of day, one seed per column, so a column shows one layout in every style.
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from trilora.toy.world import COLOURS, FLOORS, STYLES, TIMES, UNSEEN_STYLES, Attributes, render

LABEL_WIDTH = 90


def contact_sheet(size: int, scale: int, columns: int, seed: int) -> Image.Image:
    cell = size * scale
    colours = list(COLOURS)
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * cell, len(STYLES) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, style in enumerate(STYLES):
        label = style + (" *" if style in UNSEEN_STYLES else "")
        draw.text((6, row * cell + cell // 2 - 6), label, fill=(0, 0, 0))
        for column in range(columns):
            a = Attributes(
                style,
                colours[column % len(colours)],
                FLOORS[column % len(FLOORS)],
                TIMES[column % len(TIMES)],
            )
            image = render(a, seed + column, size).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(image, (LABEL_WIDTH + column * cell, row * cell))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="render size in pixels")
    parser.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling of each render")
    parser.add_argument("--columns", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first column")
    parser.add_argument("--output", type=Path, default=Path("runs/toy_samples.png"))
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(args.size, args.scale, args.columns, args.seed).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
