"""What a run writes besides metrics: adapter checkpoints, the shared files, sample images."""

import logging
from pathlib import Path

import torch

from trilora.adapters.inject import adapter_layers, lora_pairs, with_part
from trilora.base.detect import Base
from trilora.config import SETTINGS_FILE, RunConfig, ValidationConfig, to_dict
from trilora.files import save_image, write_text
from trilora.formats.diffusers_lora import save_diffusers
from trilora.formats.kohya import conv_network_args, save_kohya
from trilora.formats.metadata import kohya_metadata
from trilora.formats.native import save_adapter
from trilora.sampling import sample_images

log = logging.getLogger("trilora")
RUN_FILES = (
    "config.json",
    SETTINGS_FILE,
    "metrics.csv",
    "summary.json",
    "loss.png",
    "checkpoints",
    "best",
    "last",
    "samples",
    "tb",
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def run_files(folder: Path) -> list[Path]:
    """What of a training run `folder` holds: our files, and exported adapters (any top-level
    .safetensors, and NAME-diffusers folders)."""
    if not folder.is_dir():
        return []
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    found += sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    found += sorted(
        p for p in folder.glob("*-diffusers") if (p / "pytorch_lora_weights.safetensors").exists()
    )
    return found


def write_adapter(path: Path, state: dict, config: RunConfig, step: int, val_loss: float | None) -> None:
    """Our checkpoint of the factors as trained (TriLoRA keeps U, Sigma, V^T)."""
    metadata = {
        "method": config.adapter.method,
        "rank": config.adapter.rank,
        "alpha": config.adapter.resolved_alpha,
        "step": step,
        "val_loss": val_loss,
        "config": to_dict(config),
    }
    if config.adapter.conv_rank is not None:
        metadata |= {"conv_rank": config.adapter.conv_rank, "conv_alpha": config.adapter.resolved_conv_alpha}
    save_adapter(path, state, metadata)


def export_name(config: RunConfig, output: Path) -> str:
    return config.export.name or output.resolve().name


def export_metadata(
    config: RunConfig, family_header: dict, best_step: int, best_val_loss: float | None, steps_run: int
) -> dict:
    """The header metadata of both exported files (kohya's ss_*, modelspec.*, ours); `family_header`
    is the base model family's (`Family.header`)."""
    adapter = config.adapter
    info = {
        "name": export_name(config, Path(config.output)),
        "method": adapter.method,
        "rank": adapter.rank,
        "alpha": adapter.resolved_alpha,
        "sigma_init": adapter.sigma_init if adapter.method == "trilora" else "",
        "best_step": best_step,
        "best_val_loss": best_val_loss,
        "steps": steps_run,
        "base_model": Path(config.model.base).name,
        "config": to_dict(config),
    }
    metadata = kohya_metadata(info, family_header)
    if adapter.conv_rank is not None:
        metadata |= conv_network_args(adapter.conv_rank, adapter.resolved_conv_alpha)
    return metadata


def export_adapters(
    base: Base, config: RunConfig, output: Path, step: int, val_loss: float | None, steps_run: int
) -> dict:
    """The files users share, from the adapters currently in the pipeline: kohya layout and diffusers layout."""
    name = export_name(config, output)
    pairs, alphas = {}, {}  # alphas: each layer's own, --alpha or (LoCon's 3x3 convs) --conv-alpha
    for part in base.family.parts:
        model = getattr(base.pipe, part)
        pairs |= with_part(part, lora_pairs(model))
        alphas |= with_part(part, {k: layer.alpha for k, layer in adapter_layers(model).items()})
    dtype = DTYPES[config.export.export_dtype]
    kohya_file = output / f"{name}.safetensors"
    metadata = export_metadata(config, base.family.header(base.prediction_type), step, val_loss, steps_run)
    # SDXL: the original layout's names, the only ones every loader reads (formats/kohya.py)
    save_kohya(
        kohya_file, pairs, alphas, metadata, dtype, base.pipe.unet.config if base.family.kohya_sgm else None
    )
    diffusers_dir = output / f"{name}-diffusers"
    rank = config.adapter.rank if config.adapter.conv_rank is None else None  # LoCon: ranks per module
    save_diffusers(diffusers_dir, pairs, rank, alphas, dtype, metadata=metadata)
    log.info("exported the adapter of step %d to %s and %s", step, kohya_file, diffusers_dir)
    return {"kohya": kohya_file, "diffusers": diffusers_dir / "pytorch_lora_weights.safetensors"}


def save_samples(
    pipe,
    opts: ValidationConfig,
    config: RunConfig,
    folder: Path,
    device: torch.device,
    autocast: torch.dtype | None,
) -> None:
    """One image per sample prompt with a fixed seed, so samples of two steps differ only by the adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts, resolution = list(opts.sample_prompt), config.data.resolution
    images = sample_images(pipe, prompts, [config.train.seed] * len(prompts), opts.sample_steps, height=resolution,
                           width=resolution, device=device, autocast=autocast)  # fmt: skip
    for i, image in enumerate(images):
        save_image(image, folder / f"{i:02d}.png")
    write_text(folder / "prompts.txt", "\n".join(opts.sample_prompt) + "\n")
