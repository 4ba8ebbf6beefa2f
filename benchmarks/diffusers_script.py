"""diffusers' examples/text_to_image/train_text_to_image_lora.py, timed beside trilora (issue 13).

The script is in diffusers' repository only (not in its wheel or sdist), so a session brings it as
a file (benchmarks/README.md says how) and passes it to gpu_check.py --diffusers-script. It runs
unchanged, on the same model folder, images, resolution, batch and rank, except that its
check_min_version (which asks for the dev version of its own revision) is stubbed. Its seconds per
step come from two runs of different lengths, so its start-up (loading, building the dataset) and
its final save cancel out.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# `python -c LAUNCH SCRIPT ARGS...`: the script as its own __main__, check_min_version a no-op
LAUNCH = (
    "import runpy, sys; import diffusers.utils as u; u.check_min_version = lambda *a, **k: None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def imagefolder(data: Path, out: Path) -> Path:
    """The script's dataset layout (datasets' imagefolder): the images and a metadata.jsonl of captions."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metadata.jsonl").open("w") as f:
        for image in sorted(data.glob("*.png")):
            shutil.copy(image, out / image.name)
            caption = image.with_suffix(".txt").read_text().strip()
            f.write(json.dumps({"file_name": image.name, "text": caption}) + "\n")
    return out


def script_args(base: Path, folder: Path, out: Path, resolution: int, batch: int, rank: int, steps: int,
                bf16: bool) -> list[str]:  # fmt: skip
    return [
        "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(folder),
        "--resolution", str(resolution), "--center_crop", "--train_batch_size", str(batch),
        "--max_train_steps", str(steps), "--rank", str(rank), "--learning_rate", "1e-4",
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--checkpointing_steps", str(10**9),
        "--seed", "0", "--output_dir", str(out), *(["--mixed_precision", "bf16"] if bf16 else []),
    ]  # fmt: skip


def script_row(script: Path, base: Path, data: Path, tmp: Path, resolution: int, batch: int, rank: int,
               steps: tuple[int, int], bf16: bool) -> dict:  # fmt: skip
    """Seconds per step of the script at this batch: (wall of the long run - the short one) / extra steps."""
    folder = imagefolder(data, tmp / "imagefolder")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    walls = []
    for n in steps:
        command = [sys.executable, "-c", LAUNCH, str(script),
                   *script_args(base, folder, tmp / f"script-{n}", resolution, batch, rank, n, bf16)]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - started)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the script failed ({result.returncode}): {last[:200]}")
    return {"name": f"diffusers script b{batch}", "batch": batch,
            "s_per_step": (walls[1] - walls[0]) / (steps[1] - steps[0]), "wall_s": sum(walls)}  # fmt: skip
