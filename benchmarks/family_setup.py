"""Full-size SD 1.5, SD 2.1 768-v and SDXL base, random weights, each written as one single file in
the original layout and trained through `trilora train` on the CPU: set-up time and seconds per step
side by side, and what the exports say of their family (the check that a family needs nothing but
its module).

    python benchmarks/family_setup.py --work /tmp/family-bench   # SD: ~1 min, 2.5 GB of disk at a time
    python benchmarks/family_setup.py --work /tmp/family-bench --families sdxl   # ~7 GB of disk, ~15 GB RAM

Each model is built from the family's shipped configs with random weights in fp16 (as the released
files hold them), saved as `<family>.safetensors` with the single-file names (SD 2.1: OpenCLIP's 24
blocks, the unused 24th included, `text_projection` and `logit_scale`; SDXL: SGM names, CLIP-L and
OpenCLIP bigG with its projection and `logit_scale`), and then trained with the plain CLI: 64 px,
batch 1, TriLoRA rank 4, 2 steps, no validation; SD 1.x/2.x with the text encoder, SDXL on the UNet
alone in bf16 weights (`--mixed-precision bf16`: its fp32 weights and activations would not leave
room on a 24 GB machine). "Outside the steps" is the run's wall time less its steps: Python and
library start-up, loading the file and checking it against the configs, caching latents and
captions, adding the adapters with TriLoRA's SVD, and at the end the checkpoint and both exports. A
step is the second step's time (the first pays one-off costs). SDXL's kohya export is then loaded by
diffusers' `StableDiffusionXLPipeline.load_lora_weights` into the full-size UNet: every module of the
file must become a LoRA layer (none left over).
"""

import argparse
import json
import resource
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
from trilora.formats.ldm import OPEN_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX
from trilora.training.metrics import read_metrics

# an SD 2.x file does not say its prediction type; SDXL trains its UNet alone, in bf16 weights
EXTRA_ARGS = {"sd1": ["--train-text-encoder"], "sd2": ["--train-text-encoder", "--prediction-type", "v_prediction"],
              "sdxl": ["--mixed-precision", "bf16"]}  # fmt: skip


def random_single_file(family, path: Path) -> int:
    """The family's full-size model with random fp16 weights as one single file; its parameter count."""
    from trilora.base.load import models_on_meta

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)  # init in fp16 halves memory and time; the file is fp16 anyway
    try:
        models = models_on_meta(family.configs, family, device="cpu")  # the shipped configs' models
    finally:
        torch.set_default_dtype(torch.float32)
    models = {part: model.half() for part, model in models.items()}  # transformers follows its config's dtype
    state = {k: v.detach().contiguous() for k, v in family.ldm_state_dict(*models.values()).items()}
    if family.name == "sd2":  # what the released OpenCLIP ViT-H holds besides SD's 23 blocks
        last = models["text_encoder"].config.num_hidden_layers
        for key in [k for k in state if k.startswith(f"{OPEN_CLIP_PREFIX}transformer.resblocks.0.")]:
            state[key.replace(".resblocks.0.", f".resblocks.{last}.")] = torch.randn_like(state[key]) * 0.02
    if family.name in ("sd2", "sdxl"):  # OpenCLIP's temperature, which SD does not use
        prefix = OPEN_CLIP_PREFIX if family.name == "sd2" else SDXL_OPEN_CLIP_PREFIX
        state[prefix + "logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    count = sum(p.numel() for model in models.values() for p in model.parameters())
    save_safetensors(state, path)
    return count


def run(family, file: Path, data: Path, output: Path) -> dict:
    args = [sys.executable, "-m", "trilora", "train", "--base", str(file), "--data", str(data), "--output",
            str(output), "--resolution", "64", "--val-fraction", "0", "--rank", "4", "--steps", "2",
            "--batch-size", "1", "--checkpoint-every", "0", *EXTRA_ARGS[family.name]]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{family.name}: trilora train failed:\n{result.stderr[-3000:]}")
    elapsed = {row["step"]: row["elapsed_s"] for row in read_metrics(output / "metrics.csv")}
    kohya = output / f"{output.name}.safetensors"
    with safe_open(str(kohya), "pt") as f:
        metadata, keys = f.metadata(), list(f.keys())
    te = sorted({k.split(".")[0] for k in keys if k.startswith("lora_te")})
    unet = sorted({k.split(".")[0] for k in keys if k.startswith("lora_unet_")})
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
        "unet_modules": len(unet),
        "unet_example": next((name for name in unet if "attn1_to_q" in name), unet[0]),
        "peak_rss_gib": peak_rss_gib(),
        "log": [line for line in result.stderr.splitlines() if "base model:" in line],
    }


def peak_rss_gib() -> float:
    """The largest resident memory of any child process so far (the training runs), GiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def diffusers_leaves_nothing_over(family, kohya: Path) -> dict:
    """Load a UNet-only kohya export with diffusers' own loader into the family's full-size UNet
    (uninitialised bf16 weights: only the module tree matters) and count the LoRA layers it made."""
    from trilora.base.load import models_on_meta

    unet = models_on_meta(family.configs, family)["unet"].to_empty(device="cpu").to(torch.bfloat16)
    pipe = family.pipeline_class()(**{name: None for name in ("vae", "text_encoder", "text_encoder_2",
                                                              "tokenizer", "tokenizer_2", "scheduler")}, unet=unet)  # fmt: skip
    pipe.load_lora_weights(str(kohya.parent), weight_name=kohya.name)
    layers = sum(1 for module in unet.modules() if hasattr(module, "lora_A") and len(module.lora_A))
    with safe_open(str(kohya), "pt") as f:
        modules = len({key.split(".")[0] for key in f.keys()})
    return {"diffusers_lora_layers": layers, "file_modules": modules}


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
        file.unlink()
        if name == "sdxl":
            rows[-1] |= diffusers_leaves_nothing_over(family, output / f"{output.name}.safetensors")
        print(json.dumps(rows[-1], indent=1), flush=True)
    print("\n| family | parameters | outside the steps | first step | step | peak RSS | export header | UNet modules "
          "| TE modules |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        h = r["header"]
        print(f"| {r['family']} | {r['params_m']:.0f} M | {r['outside_s']:.1f} s | {r['first_step_s']:.1f} s | "
              f"{r['step_s']:.1f} s | {r['peak_rss_gib']:.1f} GiB | {h['ss_base_model_version']}, ss_v2 {h['ss_v2']}, "
              f"{h['modelspec.architecture']} | {r['unet_modules']} (`{r['unet_example']}`) | {r['te_modules']} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
