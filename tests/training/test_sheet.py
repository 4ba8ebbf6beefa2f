"""The contact sheet: held-out prompts (rows) x validated steps (columns), scores under each column,
the best framed; written by the training loop from what each validation generated."""

import json

import pytest
from PIL import Image

from trilora.base.tiny import make_shapes_dataset
from trilora.cli import main
from trilora.training.sheet import (
    BEST,
    LABEL_WIDTH,
    PAD,
    THUMB,
    save_column,
    shown_steps,
    thumbnail,
    write_sheet,
)


def test_many_validations_show_evenly_spaced_with_the_first_last_and_best():
    steps = list(range(0, 1010, 10))  # 101 validations
    shown = shown_steps(steps, best=370, limit=24)
    assert len(shown) <= 24 and shown[0] == 0 and shown[-1] == 1000 and 370 in shown
    assert shown_steps([0, 10, 20], best=None) == [0, 10, 20]


def test_the_sheet_places_each_steps_images_in_its_column_and_frames_the_best(tmp_path):
    colours = {0: "red", 10: "green", 20: "blue"}
    for step, colour in colours.items():  # two prompts; the second image of each step is white
        save_column(tmp_path, step, [Image.new("RGB", (32, 32), colour), Image.new("RGB", (32, 32), "white")],
                    ["a red house", "a white house"])  # fmt: skip
    rows = [{"step": s, "val_loss": 0.1 + s / 100, "signal": s / 20} for s in colours]
    sheet = Image.open(write_sheet(tmp_path, rows, best_step=10)).convert("RGB")
    width = THUMB + 2 * PAD
    assert sheet.width == LABEL_WIDTH + 3 * width and sheet.height > 2 * THUMB
    for i, colour in enumerate(colours.values()):
        x = LABEL_WIDTH + i * width + PAD + THUMB // 2
        assert sheet.getpixel((x, PAD + THUMB // 2)) == Image.new("RGB", (1, 1), colour).getpixel((0, 0))
        assert sheet.getpixel((x, PAD + THUMB + THUMB // 2)) == (255, 255, 255)
    framed = [sheet.getpixel((LABEL_WIDTH + i * width + 2, sheet.height // 2)) for i in range(3)]
    assert framed == [(255, 255, 255), BEST, (255, 255, 255)]  # only the best column has the frame
    assert thumbnail(Image.new("RGB", (1024, 512))).size == (THUMB, THUMB // 2)


@pytest.mark.slow
def test_a_run_with_sample_prompts_writes_its_sheet(tmp_path, tiny_model_dir):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    run = tmp_path / "run"
    args = ["train", "--base", str(tiny_model_dir), "--data", str(data), "--output", str(run), "--resolution", "32",
            "--val-fraction", "0.25", "--rank", "2", "--steps", "4", "--batch-size", "2", "--validate-every", "2",
            "--val-timesteps", "2", "--stop-on", "val_loss", "--sample-prompt", "a red square",
            "--sample-prompt", "a blue circle"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["contact_sheet"] == str(run / "contact-sheet.png")
    assert sorted(p.name for p in (run / "sheet").glob("step-*")) == [f"step-00000{s}.png" for s in (0, 2, 4)]
    assert (run / "sheet" / "prompts.txt").read_text() == "a red square\na blue circle\n"
    column = Image.open(run / "sheet" / "step-000002.png").convert("RGB")
    sample = thumbnail(Image.open(run / "samples" / "step-000002" / "01.png"))
    assert (
        column.size == (THUMB, 2 * THUMB)
        and column.crop((0, THUMB, THUMB, 2 * THUMB)).tobytes() == sample.tobytes()
    )
