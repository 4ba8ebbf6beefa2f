"""Images from a base model and adapters, through diffusers' own pipeline and LoRA loader.

What we generate is what users of other diffusers-based tools get from the same files.
"""

import logging
from pathlib import Path

from trilora.config import SCHEDULERS, SETTINGS_FILE, SamplingConfig, settings_toml
from trilora.errors import UserError
from trilora.files import save_image, write_text
from trilora.run_folder import check_folder_path, prepare_folder

log = logging.getLogger("trilora")


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


def generate(pipe, prompt: str, negative_prompt: str | None, sampling: SamplingConfig):
    """PIL images; image k starts from the latent of seed + k, as in `trilora evaluate`, so any of
    its images is made again here with the same prompt, seed + k and --num-images 1."""
    import torch

    return pipe(
        [prompt] * sampling.num_images,
        negative_prompt=None if negative_prompt is None else [negative_prompt] * sampling.num_images,
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance,
        height=sampling.height,
        width=sampling.width,
        generator=[
            torch.Generator(device="cpu").manual_seed(sampling.seed + k) for k in range(sampling.num_images)
        ],
    ).images


def generate_command(tree) -> list[Path]:
    """`trilora generate`: the images of `tree.generate.prompt`, saved as `--output` says, each PNG
    holding the settings that made it (text chunk "trilora", TOML), and a folder also settings.toml."""
    from trilora.device import resolve_device

    model, sampling, settings = tree.model, tree.sampling, tree.generate
    sampling.validate()
    settings.validate()
    loras = [parse_lora(spec) for spec in settings.lora]
    if not Path(model.base).exists():
        raise UserError(
            f"base model not found: {model.base}" if model.base else "no base model: pass --base PATH"
        )
    output = Path(settings.output)
    single = output.suffix.lower() == ".png" and sampling.num_images == 1
    check_folder_path(output.parent if single else output, "--output")
    device = resolve_device(settings.device)
    import torch

    from trilora.base.load import load_pipeline

    pipe = load_pipeline(
        model.base, model.base_config, dtype=torch.float16 if device.type == "cuda" else torch.float32
    )
    if sampling.scheduler:
        pipe.scheduler = scheduler_from(sampling.scheduler, pipe.scheduler.config)
    load_adapters(pipe, loras)
    pipe.to(device)
    images = generate(pipe, settings.prompt, settings.negative_prompt, sampling)
    settings_text = settings_toml(tree, "generate")
    if single:
        save_image(images[0], output, text={"trilora": settings_text})
        return [output]
    prepare_folder(output)
    paths = [output / f"{i:02d}.png" for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        save_image(image, path, text={"trilora": settings_text})
    write_text(output / SETTINGS_FILE, settings_text)
    return paths
