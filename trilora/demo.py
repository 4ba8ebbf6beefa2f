"""`trilora demo`: teach the shipped toy base model a style it has never seen, on a CPU in minutes.

The toy base model (trilora/toy/base/: Stable Diffusion 1.x's architecture at 32 px, trained on
four styles) has never seen onion domes. The demo renders 30 onion-domed buildings in three wall
colours plus a held-out validation set, trains a TriLoRA adapter with validation-driven stopping,
exports it, and generates the same prompts (all eight colours) before and after. The toy world's
judge counts how many images show the new style and the asked-for colour, floors and time.
"""

import logging
from pathlib import Path

from PIL import Image

from trilora.base.load import load_pipeline
from trilora.captioning.run import caption_folder
from trilora.config import (
    SETTINGS_FILE,
    CaptionConfig,
    DemoConfig,
    RunConfig,
    Tree,
    from_dict,
    load_toml,
    settings_toml,
)
from trilora.errors import UserError
from trilora.files import save_image, write_json, write_text
from trilora.inference.generate import load_adapters
from trilora.run_folder import claim
from trilora.scorers import stopping_scorer
from trilora.toy.base import RESOLUTION, toy_base
from trilora.toy.evaluate import (
    ADAPTER_STYLE,
    SIGNAL_SEED,
    adapter_dataset,
    generate_images,
    prompt_set,
    score,
)
from trilora.toy.judge import load_judge
from trilora.toy.world import caption
from trilora.training.loop import train

log = logging.getLogger("trilora")
TRAIN_IMAGES = 30
VAL_IMAGES = 12
GRID_PROMPTS = 24


def demo_config(output: Path, base: Path, steps: int) -> RunConfig:
    return from_dict(
        {
            "output": str(output / "run"),
            "model": {"base": str(base)},
            "data": {"data": str(output / "data"), "val_data": str(output / "val"), "resolution": RESOLUTION},
            "adapter": {"method": "trilora", "rank": 16, "conv_rank": 16},
            "train": {
                "lr": 2e-3,
                "batch_size": 8,
                "steps": steps,
                "seed": 0,
                "warmup_steps": 20,
                "min_snr_gamma": 5.0,
            },
            # trilora train's default rule: to the end, the best by the generation signal (--stop-on auto
            # on the toy base: style hit x fidelity) in a mean of 3 validations, on the long bench's 16
            # held-out prompts, in all eight colours: not the test prompts, not the validation captions
            "validation": {
                "validate_every": 20,
                "val_timesteps": 8,
                "signal_prompt": [caption(a) for a in prompt_set(16, (ADAPTER_STYLE,), seed=SIGNAL_SEED)],
            },
            "export": {"name": "onion"},
        },
        source="demo",
    )


DEMO_FILES = ("data", "val", "run", "before_after.png", "prompts.txt", "metrics.json", SETTINGS_FILE)


def demo_files(folder: Path) -> list[Path]:
    return [folder / name for name in DEMO_FILES if (folder / name).exists()]


def run_demo(settings: DemoConfig) -> dict:
    """The demo into settings.output, which it holds locked; an earlier demo there is replaced only
    with settings.overwrite."""

    settings.validate()
    output, base = Path(settings.output), toy_base(settings.base)
    if not settings.overwrite and holds_demo(output):
        earlier, output = output, next_free(output)
        print(f"demo: {earlier} holds an earlier demo, kept; this one goes to {output} (--overwrite replaces "
              f"{earlier} instead)")  # fmt: skip
        settings.output = str(output)
    lock = claim(
        output,
        demo_files,
        "demo",
        settings.overwrite,
        False,
        "its results are in before_after.png and run/ (make demo DEMO_FLAGS=--overwrite replaces them)",
        what="a demo",
    )
    try:
        write_text(output / SETTINGS_FILE, settings_toml(Tree(demo=settings), "demo"))
        return demo_locked(output, settings.steps, base, settings.captions)
    finally:
        lock.release()


def holds_demo(folder: Path) -> bool:
    """Whether `folder` holds what an earlier `trilora demo` wrote (its settings file says so)."""
    try:
        return "demo" in load_toml(folder / SETTINGS_FILE)
    except UserError:  # no settings file, or not one of ours
        return False


def next_free(folder: Path) -> Path:
    """`folder`-2, -3, ...: the first that does not exist."""
    n = 2
    while folder.with_name(f"{folder.name}-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}-{n}")


def auto_caption(folders: list[Path]) -> dict:
    """Replace the renders' captions with the toy captioner's; how many it got exactly right."""

    truth = {p: p.read_text() for folder in folders for p in folder.glob("*.txt")}
    for path in truth:
        path.unlink()
    for folder in folders:
        caption_folder(folder, CaptionConfig(model="toy"))
    right = sum(path.read_text() == text for path, text in truth.items())
    log.info("demo: the toy captioner wrote %d of %d captions exactly as the renders' own", right, len(truth))
    return {"source": "toy captioner", "exactly_right": right, "images": len(truth)}


def demo_locked(output: Path, steps: int, base: Path, captions: str = "given") -> dict:
    log.info("demo: rendering %d %s buildings to %s", TRAIN_IMAGES + VAL_IMAGES, ADAPTER_STYLE, output)
    adapter_dataset(output / "data", TRAIN_IMAGES, seed=0)
    adapter_dataset(output / "val", VAL_IMAGES, seed=1)
    caption_check = auto_caption([output / "data", output / "val"]) if captions == "toy" else None
    summary = train(demo_config(output, base, steps), find_scorer=stopping_scorer)

    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge()
    wanted = prompt_set(GRID_PROMPTS, (ADAPTER_STYLE,), seed=0)
    before = generate_images(pipe, wanted)
    load_adapters(pipe, [(Path(summary["exported"]["kohya"]), 1.0)])
    after = generate_images(pipe, wanted)
    scores = {"before": score(judge, before, wanted), "after": score(judge, after, wanted)}
    if caption_check is not None:
        scores["captions"] = caption_check
    rows = [images[i : i + 8] for images in (before, after) for i in range(0, GRID_PROMPTS, 8)]
    save_image(image_grid(rows), output / "before_after.png")
    write_text(output / "prompts.txt", "".join(caption(a) + "\n" for a in wanted))
    write_json(output / "metrics.json", scores)

    b, a = scores["before"], scores["after"]
    print(
        f"demo finished: best step {summary['best_step']} of {summary['steps_run']} (chosen by "
        f"{'the generation signal' if summary['stop_on'] == 'generation' else 'validation loss'})"
    )
    print(f"  {ADAPTER_STYLE} style hit (judge): {b['style']:.0%} before -> {a['style']:.0%} after")
    print(f"  colour right: {b['colour']:.0%} -> {a['colour']:.0%}; colour, floors and time all right: "
          f"{b['fidelity']:.0%} -> {a['fidelity']:.0%}")  # fmt: skip
    if caption_check is not None:
        print(
            f"  captions:     written by `trilora caption --model toy`, {caption_check['exactly_right']} of "
            f"{caption_check['images']} exactly the renders' own"
        )
    print(f"  run folder:   {output / 'run'}  (metrics.csv, loss.png, summary.json)")
    print(f"  adapter:      {summary['exported']['kohya']}")
    print(
        f"  before/after: {output / 'before_after.png'} (top three rows: base model, bottom three: with the adapter;"
    )
    print(f"                prompts in {output / 'prompts.txt'}, scores in {output / 'metrics.json'})")
    return {"summary": summary, "scores": scores}


def image_grid(rows: list[list[Image.Image]], scale: int = 4) -> Image.Image:
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * scale * len(rows[0]), height * scale * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            big = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
            grid.paste(big, (c * width * scale, r * height * scale))
    return grid
