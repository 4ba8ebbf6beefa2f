"""Images from a base model and adapters, through diffusers' own pipeline and LoRA loader.

What we generate is what users of other diffusers-based tools get from the same files.
"""

import argparse
import logging
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from trilora.base.load import load_pipeline
from trilora.errors import UserError

log = logging.getLogger("trilora")

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "pndm": PNDMScheduler,
    "unipc": UniPCMultistepScheduler,
}


def parse_lora(spec: str) -> tuple[Path, float]:
    """`FILE` or `FILE:STRENGTH` (strength defaults to 1)."""
    path, strength = spec, 1.0
    head, separator, tail = spec.rpartition(":")
    if separator and head:
        try:
            path, strength = head, float(tail)
        except ValueError:
            pass  # the ':' belongs to the path
    if not Path(path).exists():
        raise UserError(f"adapter file not found: {path}")
    return Path(path), strength


def load_adapters(pipe, loras: list[tuple[Path, float]]) -> None:
    """Load each adapter with diffusers' loader and set its strength."""
    names = []
    for i, (path, _) in enumerate(loras):
        name = f"adapter{i}"
        folder, weight_name = (path, None) if path.is_dir() else (path.parent, path.name)
        try:
            pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=name)
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            raise UserError(
                f"cannot load adapter {path} into this base model: {str(error).splitlines()[0]}"
            ) from None
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[strength for _, strength in loras])


def generate(
    pipe,
    prompt: str,
    negative_prompt: str | None = None,
    seed: int = 30,
    steps: int = 20,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    num_images: int = 1,
):
    """PIL images; the defaults are the TriLoRA paper's protocol (seed 30, 20 steps, guidance 7.5)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        num_images_per_prompt=num_images,
        generator=generator,
    ).images


def add_generate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", required=True, help="Base model: diffusers folder or single-file checkpoint."
    )
    parser.add_argument(
        "--base-config", help="Config folder for a single-file checkpoint that is not SD 1.x-shaped."
    )
    parser.add_argument(
        "--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help="Adapter (repeatable)."
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument(
        "--scheduler", choices=sorted(SCHEDULERS), help="Sampler (default: the base model's own)."
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--output", required=True, help="A .png file (one image) or a folder.")


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    from trilora.training.setup import resolve_device

    loras = [parse_lora(spec) for spec in args.lora]
    if args.num_images < 1 or args.steps < 1:
        raise UserError("--num-images and --steps must be at least 1")
    device = resolve_device(args.device)
    pipe = load_pipeline(
        args.base, args.base_config, dtype=torch.float16 if device.type == "cuda" else torch.float32
    )
    if args.scheduler:
        pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config)
    load_adapters(pipe, loras)
    pipe.to(device)
    images = generate(pipe, args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance,
                      args.height, args.width, args.num_images)  # fmt: skip
    output = Path(args.output)
    if output.suffix.lower() == ".png" and len(images) == 1:
        output.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(output)
        return [output]
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / f"{i:02d}.png" for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
    return paths
