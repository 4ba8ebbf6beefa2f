"""Seconds per training step: trilora's loop against a bare loop, side by side in one run.

The bare loop is the least a LoRA trainer must do: the same UNet with the same adapters, the same
cached latents and text embeddings and batch, forward + backward + AdamW, nothing else. Our loop
adds data order, per-step metrics, the progress display and the learning-rate schedule. The goal
is an overhead ratio of at most 1.10. The last line is the ratio. With --compile, our loop also runs
with --compile (regional torch.compile; its compilation falls in the warm-up steps the medians leave
out), and the compiled/eager ratio is printed before it.

    python benchmarks/train_step.py                 # the tiny model on the CPU
    python benchmarks/train_step.py --compile       # and our loop compiled, side by side
    python benchmarks/train_step.py --model sd15    # full-size SD 1.5, random weights (needs a GPU)
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trilora.adapters.inject import add_adapters, trainable_parameters, unet_targets
from trilora.base.load import load_pipeline
from trilora.base.tiny import TINY_RESOLUTION, make_shapes_dataset, save_tiny_pipeline
from trilora.config import from_dict
from trilora.device import resolve_device
from trilora.families.sd1 import CONFIGS as SD15_CONFIGS
from trilora.training.loop import train
from trilora.training.metrics import read_metrics


def save_sd15_random(path: Path) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sd15 = SD15_CONFIGS
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(sd15 / "tokenizer"),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet")),
        scheduler=DDPMScheduler.from_pretrained(sd15 / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def bare_loop(
    base: Path, resolution: int, batch_size: int, rank: int, steps: int, device: torch.device
) -> list[float]:
    pipe = load_pipeline(base)
    unet = pipe.unet.to(device)
    if device.type == "cuda":
        unet.to(torch.bfloat16)
    add_adapters(unet, unet_targets(unet), "trilora", rank, rank)
    params = trainable_parameters(unet)
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latents = torch.randn(batch_size, 4, resolution // factor, resolution // factor, device=device)
    text = torch.randn(batch_size, 77, pipe.text_encoder.config.hidden_size, device=device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,), device=device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            prediction = unet(scheduler.add_noise(latents, noise, t), t, text).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # a real loop logs the loss: the same synchronisation as ours
        times.append(time.perf_counter() - start)
    return times


def our_loop(
    base: Path,
    data: Path,
    out: Path,
    resolution: int,
    batch_size: int,
    rank: int,
    steps: int,
    compile: bool = False,
) -> list[float]:
    config = from_dict({
        "output": str(out),
        "model": {"base": str(base)},
        "data": {"data": str(data), "resolution": resolution, "val_fraction": 0.0},
        "adapter": {"method": "trilora", "rank": rank},
        "train": {"batch_size": batch_size, "steps": steps, "compile": compile},
        "validation": {"validate_every": steps + 1},
    })  # fmt: skip
    train(config)
    elapsed = [r["elapsed_s"] for r in read_metrics(out / "metrics.csv") if r["step"] >= 1]
    return [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="also time our loop with --compile")
    args = parser.parse_args()
    device = resolve_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "tiny":
            base, resolution = save_tiny_pipeline(tmp / "base"), TINY_RESOLUTION
        else:
            base, resolution = save_sd15_random(tmp / "base"), 512
        data = make_shapes_dataset(tmp / "data", count=16, size=resolution)
        warmup = max(3, args.steps // 10)
        # bare, ours, bare: the bare figure is the mean of its two runs, so drift in machine speed
        # (warm-up, other load) does not favour either side
        bare_before = bare_loop(base, resolution, args.batch_size, args.rank, args.steps, device)[warmup:]
        ours = our_loop(base, data, tmp / "run", resolution, args.batch_size, args.rank, args.steps)[warmup:]
        if args.compile:
            compiled = our_loop(base, data, tmp / "compiled", resolution, args.batch_size, args.rank, args.steps,
                                compile=True)[warmup:]  # fmt: skip
        bare_after = bare_loop(base, resolution, args.batch_size, args.rank, args.steps, device)[warmup:]
    bare_s = (statistics.median(bare_before) + statistics.median(bare_after)) / 2
    ours_s = statistics.median(ours)
    print(
        f"device {device}, model {args.model}, batch {args.batch_size}, rank {args.rank}, {args.steps} steps"
    )
    print(f"bare loop: {bare_s * 1000:.1f} ms/step (median)")
    print(f"trilora:   {ours_s * 1000:.1f} ms/step (median)")
    if args.compile:
        compiled_s = statistics.median(compiled)
        print(f"trilora --compile: {compiled_s * 1000:.1f} ms/step (median)")
        print(f"compiled / eager: {compiled_s / ours_s:.2f}")
    print(f"overhead ratio: {ours_s / bare_s:.2f}")


if __name__ == "__main__":
    main()
