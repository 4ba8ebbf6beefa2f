"""A prompt x strength grid: what each column sets the adapters to, the cells' file names, and the
labelled sheet (grid.png) that shows them, as A1111's X/Y plot does, from one model load."""

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

LABEL_CHARS = 48  # a row label (the prompt) is cut to this many characters on the sheet
GAP = 4  # pixels between cells
MIN_CELL = 128  # pixels: the longest side a cell is shown at, at least
MAX_CELLS = 10000  # prompts x columns x images: the resource bound of one generate


@dataclass(frozen=True)
class Column:
    label: str
    weights: tuple[float, ...]  # one per adapter, in --lora order


def columns(names: list[str], strengths: list[float], multipliers: list[float], apart: bool) -> list[Column]:
    """The grid's columns. Stacked: every adapter at its own strength times each multiplier (the
    multipliers default to [1]: the adapters as given). Apart: the base model first, then each adapter
    alone at its strength times each multiplier, so adapters are compared side by side."""
    multipliers = multipliers or [1.0]
    if not names:
        return [Column("base model", ())]
    if not apart:

        def label(m: float) -> str:  # one adapter: its strength; several: the multiplier of theirs
            return f"{names[0]} {strengths[0] * m:g}" if len(names) == 1 else f"x{m:g}"

        return [Column(label(m), tuple(s * m for s in strengths)) for m in multipliers]
    alone = [Column("base model", tuple(0.0 for _ in names))]
    for i, name in enumerate(names):
        for m in multipliers:
            weights = tuple(strengths[j] * m if j == i else 0.0 for j in range(len(names)))
            alone.append(Column(f"{name} {strengths[i] * m:g}", weights))
    return alone


def is_grid(prompts: list[str], grid: list[Column]) -> bool:
    """One prompt in one column is a plain generate (files 00.png, 01.png, ...); anything more a grid."""
    return len(prompts) > 1 or len(grid) > 1


def cell_name(row: int, column: int, image: int) -> str:
    return f"p{row:02d}-c{column:02d}-{image:02d}.png"


def sheet(cells: list[list[list[Image.Image]]], prompts: list[str], grid: list[Column]) -> Image.Image:
    """cells[row][column] holds that prompt's images in that column; rows labelled with the prompt,
    columns with what the adapters were set to; each cell's images side by side."""
    first = cells[0][0][0]
    scale = max(
        1, -(-MIN_CELL // max(first.size))
    )  # tiny images (a test model's) shown larger, pixel for pixel
    width, height = first.width * scale, first.height * scale
    per_cell = len(cells[0][0])
    font = ImageFont.load_default()
    rows = [p if len(p) <= LABEL_CHARS else p[: LABEL_CHARS - 3] + "..." for p in prompts]
    label_width, header = 16 + int(max(font.getlength(text) for text in rows)), 24
    cell_width = width * per_cell + GAP
    out = Image.new(
        "RGB", (label_width + cell_width * len(grid), header + (height + GAP) * len(prompts)), "white"
    )
    draw = ImageDraw.Draw(out)
    for c, column in enumerate(grid):
        draw.text((label_width + c * cell_width + 4, 6), column.label, fill="black", font=font)
    for r, text in enumerate(rows):
        draw.text((4, header + r * (height + GAP) + height // 2 - 6), text, fill="black", font=font)
        for c in range(len(grid)):
            for k, image in enumerate(cells[r][c]):
                shown = image.convert("RGB").resize((width, height), Image.NEAREST)
                out.paste(shown, (label_width + c * cell_width + k * width, header + r * (height + GAP)))
    return out
