"""Full-size SD 1.5 and SD 2.1 768-v, random weights, each written as one single file in the original
LDM layout and trained through `trilora train` on the CPU: set-up time and seconds per step side by
side, and what the exports say of their family (issue 20's check that SD 2.x needs nothing but its
family module).

    python benchmarks/family_setup.py --work /tmp/family-bench   # ~1 min on 2 cores, 2.5 GB of disk at a time

Each model is built from the family's shipped configs with random weights in fp16 (as the released
files hold them), saved as `<family>.safetensors` with the single-file names (SD 2.1: OpenCLIP's 24
blocks, the unused 24th included, `text_projection` and `logit_scale`), and then trained with the
plain CLI: 64 px, batch 1, TriLoRA rank 4 on the UNet and the text encoder, 2 steps, no validation.
"Outside the steps" is the run's wall time less its steps: Python and library start-up, loading the
file and checking it against the configs, caching latents and captions, adding the adapters with
TriLoRA's SVD, and at the end the checkpoint and both exports. A step is the second step's time (the
first pays one-off costs).
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from trilora.base.tiny import make_shapes_dataset
from trilora.families.registry import FAMILIES
from trilora.files import save_safetensors
from trilora.formats.ldm import OPEN_CLIP_PREFIX
from trilora.training.metrics import read_metrics

EXTRA_ARGS = {"sd1": [], "sd2": ["--prediction-type", "v_prediction"]}  # an SD 2.x file does not say


def random_single_file(family, path: Path) -> int:
    """The family's full-size model with random fp16 weights as one single file; its parameter count."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = family.configs
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)  # init in fp16 halves memory and time; the file is fp16 anyway
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    finally:
        torch.set_default_dtype(torch.float32)
    state = {k: v.detach().contiguous() for k, v in family.ldm_state_dict(unet, vae, text_encoder).items()}
    if family.name == "sd2":  # what the released OpenCLIP ViT-H holds besides SD's 23 blocks
        last = text_encoder.config.num_hidden_layers
        for key in [k for k in state if k.startswith(f"{OPEN_CLIP_PREFIX}transformer.resblocks.0.")]:
            state[key.replace(".resblocks.0.", f".resblocks.{last}.")] = torch.randn_like(state[key]) * 0.02
        state[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    count = sum(p.numel() for model in (unet, vae, text_encoder) for p in model.parameters())
    save_safetensors(state, path)
    return count


def run(family, file: Path, data: Path, output: Path) -> dict:
    args = [sys.executable, "-m", "trilora", "train", "--base", str(file), "--data", str(data), "--output",
            str(output), "--resolution", "64", "--val-fraction", "0", "--rank", "4", "--train-text-encoder",
            "--steps", "2", "--batch-size", "1", "--checkpoint-every", "0", *EXTRA_ARGS[family.name]]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{family.name}: trilora train failed:\n{result.stderr[-3000:]}")
    elapsed = {row["step"]: row["elapsed_s"] for row in read_metrics(output / "metrics.csv")}
    kohya = output / f"{output.name}.safetensors"
    with safe_open(str(kohya), "pt") as f:
        metadata, keys = f.metadata(), list(f.keys())
    te = sorted({k.split(".")[0] for k in keys if k.startswith("lora_te_")})
    return {
        "family": family.name,
        "outside_s": wall - elapsed[2],
        "first_step_s": elapsed[1],
        "step_s": elapsed[2] - elapsed[1],
        "wall_s": wall,
        "header": {
            k: metadata.get(k)
            for k in ("ss_base_model_version", "ss_v2", "modelspec.architecture", "modelspec.prediction_type")
        },  # fmt: skip
        "te_modules": len(te),
        "te_example": te[0] if te else None,
        "log": [line for line in result.stderr.splitlines() if "base model:" in line],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder for the model files (2.5 GB each)")
    parser.add_argument("--families", nargs="+", default=["sd1", "sd2"], choices=list(FAMILIES))
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = make_shapes_dataset(args.work / "data", count=4, size=64)
    rows = []
    for name in args.families:
        family = FAMILIES[name]
        file = args.work / f"{name}.safetensors"
        started = time.perf_counter()
        params = random_single_file(family, file)
        print(f"{name}: wrote {file} ({params / 1e6:.0f} M parameters, {file.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        output = args.work / f"run-{name}"
        shutil.rmtree(output, ignore_errors=True)
        rows.append(run(family, file, data, output) | {"params_m": params / 1e6})
        print(json.dumps(rows[-1], indent=1), flush=True)
        file.unlink()
    print("\n| family | parameters | outside the steps | first step | step | export header | TE modules |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        h = r["header"]
        print(f"| {r['family']} | {r['params_m']:.0f} M | {r['outside_s']:.1f} s | {r['first_step_s']:.1f} s | "
              f"{r['step_s']:.1f} s | {h['ss_base_model_version']}, ss_v2 {h['ss_v2']}, {h['modelspec.architecture']} "
              f"| {r['te_modules']} (`{r['te_example']}`) |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
