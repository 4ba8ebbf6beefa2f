"""The contact sheet: a run's held-out prompts (rows) at its validated steps (columns), with the
scores under each column and the best step framed, so that a person can see where the style came
and where the prompt stopped being obeyed, and pick another step to export (`trilora export RUN
--step N`, or the UI's run page).

Each validation that generates images (the generation signal's held-out prompts, or else the
--sample-prompt samples) saves one column, OUTPUT/sheet/step-NNNNNN.png: its images stacked top to
bottom at THUMB px. contact-sheet.png is assembled from the columns after every validation; a run
with many validations shows at most MAX_COLUMNS of them, evenly spaced, always with the best and
the last. Plumbing only: which images and scores is the training loop's business.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from trilora.files import save_image, write_text

SHEET = "sheet"  # OUTPUT/sheet/step-NNNNNN.png and prompts.txt
SHEET_FILE = "contact-sheet.png"
THUMB = 96  # px: each image's longest side in the sheet (small renders are enlarged, pixels kept sharp)
MAX_COLUMNS = 24
LABEL_WIDTH = 220  # px: the prompts' column
FOOTER = 52  # px: the scores under each column
PAD = 4
INK, FAINT, BEST = (20, 20, 20), (90, 90, 90), (0, 120, 60)


def column_path(output: Path, step: int) -> Path:
    return output / SHEET / f"step-{step:06d}.png"


def sheet_steps(output: Path) -> list[int]:
    names = (p.name for p in (output / SHEET).glob("step-*.png"))
    return sorted(int(n[5:11]) for n in names if n[5:11].isdigit() and len(n) == len("step-000000.png"))


def thumbnail(image: Image.Image) -> Image.Image:
    """`image` scaled so its longest side is THUMB px (nearest-neighbour when enlarging: no blur)."""
    w, h = image.size
    scale = THUMB / max(w, h)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def save_column(output: Path, step: int, images: list[Image.Image], prompts: list[str]) -> None:
    """One validated step's images, top to bottom, as OUTPUT/sheet/step-NNNNNN.png (and the prompts)."""
    thumbs = [thumbnail(i) for i in images]
    column = Image.new("RGB", (THUMB, THUMB * len(thumbs)), "white")
    for k, t in enumerate(thumbs):
        column.paste(t, ((THUMB - t.width) // 2, k * THUMB + (THUMB - t.height) // 2))
    save_image(column, column_path(output, step))
    write_text(output / SHEET / "prompts.txt", "".join(p.replace("\n", " ") + "\n" for p in prompts))


def shown_steps(steps: list[int], best: int | None, limit: int = MAX_COLUMNS) -> list[int]:
    """At most `limit` of `steps`: `limit` - 1 evenly spaced from the first to the last, and the best."""
    if len(steps) <= limit:
        return list(steps)
    picked = {steps[round(i * (len(steps) - 1) / (limit - 2))] for i in range(limit - 1)}
    return sorted(picked | ({best} if best in steps else set()))


def score_lines(row: dict | None, signal_name: str) -> list[str]:
    if row is None:
        return []
    lines = []
    if row.get("signal") is not None:
        lines.append(f"{signal_name} {row['signal']:.2f}")
    if row.get("val_loss") is not None:
        lines.append(f"loss {row['val_loss']:.4f}")
    return lines


def write_sheet(
    output: Path, rows: list[dict], best_step: int | None, signal_name: str = "signal"
) -> Path | None:
    """contact-sheet.png from the saved columns and the metrics rows (step, val_loss, signal); None
    when no validation generated images."""
    steps = shown_steps(sheet_steps(output), best_step)
    if not steps:
        return None
    prompts_file = output / SHEET / "prompts.txt"
    prompts = prompts_file.read_text().splitlines() if prompts_file.is_file() else []
    columns = [Image.open(column_path(output, s)).convert("RGB") for s in steps]
    height = max(c.height for c in columns)
    width = THUMB + 2 * PAD
    sheet = Image.new("RGB", (LABEL_WIDTH + width * len(columns), height + FOOTER + 2 * PAD), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for k in range(height // THUMB):
        text = prompts[k] if k < len(prompts) else ""
        for j, line in enumerate(wrap(draw, text, font, LABEL_WIDTH - 2 * PAD)[:6]):
            draw.text((PAD, PAD + k * THUMB + j * 12), line, fill=FAINT, font=font)
    by_step = {r["step"]: r for r in rows}
    for i, (step, column) in enumerate(zip(steps, columns, strict=True)):
        x = LABEL_WIDTH + i * width
        sheet.paste(column, (x + PAD, PAD))
        best = step == best_step
        if best:
            draw.rectangle((x + 1, 1, x + width - 2, height + FOOTER + 2 * PAD - 2), outline=BEST, width=3)
        head = f"step {step}" + (" best" if best else "")
        for j, line in enumerate([head, *score_lines(by_step.get(step), signal_name)]):
            draw.text(
                (x + PAD, height + PAD + 2 + j * 12), line, fill=BEST if best and j == 0 else INK, font=font
            )
    path = output / SHEET_FILE
    save_image(sheet, path)
    return path


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines
