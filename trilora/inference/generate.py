"""Images from a base model and adapters, through diffusers' own pipeline and LoRA loader.

What we generate is what users of other diffusers-based tools get from the same files.
"""

import argparse
import logging
from pathlib import Path

from trilora.errors import UserError
from trilora.files import save_image
from trilora.run_folder import check_folder_path, prepare_folder

log = logging.getLogger("trilora")

# Sampler names -> diffusers scheduler classes (imported when used: `--help` stays fast).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def scheduler_from(name: str, config):
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


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


def check_fits(pipe, path: Path) -> None:
    """Refuse, naming the module and both shapes, an adapter made for another base model."""
    from trilora.formats.inspect import adapter_shapes

    shapes, metadata = adapter_shapes(path)
    made_for = metadata.get("ss_sd_model_name") or metadata.get("ss_base_model_version")
    made_for = f"; its metadata says it was made for {made_for}" if made_for else ""
    for key, (down, up) in shapes.items():
        part, _, module_path = key.partition(".")
        model = getattr(pipe, part, None)
        try:
            module = model.get_submodule(module_path) if model is not None else None
        except AttributeError:
            module = None
        if module is None or not hasattr(module, "weight"):
            raise UserError(f"cannot load adapter {path}: it adapts {key}, which this base model does not have"
                            f"{made_for}; use the base model it was trained for")  # fmt: skip
        weight = module.weight.shape  # (out, in[, kh, kw])
        if down[1] != weight[1] or up[0] != weight[0]:
            raise UserError(f"cannot load adapter {path}: {key} is {weight[1]} -> {weight[0]} in this base model "
                            f"but {down[1]} -> {up[0]} in the file{made_for}; use the base model it was "
                            "trained for")  # fmt: skip


def load_adapters(pipe, loras: list[tuple[Path, float]]) -> None:
    """Load each adapter with diffusers' loader and set its strength."""
    names = []
    for i, (path, _) in enumerate(loras):
        name = f"adapter{i}"
        folder, weight_name = (path, None) if path.is_dir() else (path.parent, path.name)
        check_fits(pipe, path)
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
    import torch

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


def check_size(flag: str, value: int | None) -> None:
    if value is not None and (value < 8 or value % 8):
        raise UserError(f"{flag} must be a positive multiple of 8 (the VAE's factor), got {value}")


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    from trilora.device import resolve_device

    loras = [parse_lora(spec) for spec in args.lora]
    if args.num_images < 1 or args.steps < 1:
        raise UserError("--num-images and --steps must be at least 1")
    check_size("--height", args.height)
    check_size("--width", args.width)
    output = Path(args.output)
    single = output.suffix.lower() == ".png" and args.num_images == 1
    check_folder_path(output.parent if single else output, "--output")
    device = resolve_device(args.device)
    import torch

    from trilora.base.load import load_pipeline

    pipe = load_pipeline(
        args.base, args.base_config, dtype=torch.float16 if device.type == "cuda" else torch.float32
    )
    if args.scheduler:
        pipe.scheduler = scheduler_from(args.scheduler, pipe.scheduler.config)
    load_adapters(pipe, loras)
    pipe.to(device)
    images = generate(pipe, args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance,
                      args.height, args.width, args.num_images)  # fmt: skip
    if single:
        save_image(images[0], output)
        return [output]
    prepare_folder(output)
    paths = [output / f"{i:02d}.png" for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        save_image(image, path)
    return paths
