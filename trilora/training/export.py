"""What a run writes besides metrics: adapter checkpoints, the shared files, sample images."""

import logging
from pathlib import Path

import torch

from trilora.adapters.inject import adapter_layers, lora_pairs, with_part
from trilora.base.detect import Base, config_folder, read_json, shipped_configs
from trilora.config import SETTINGS_FILE, RunConfig, ValidationConfig, from_dict, to_dict
from trilora.errors import UserError
from trilora.families.registry import FAMILIES
from trilora.files import save_image, write_json, write_text
from trilora.formats.diffusers_lora import save_diffusers
from trilora.formats.kohya import conv_network_args, save_kohya
from trilora.formats.metadata import kohya_metadata
from trilora.formats.native import load_adapter, native_pairs, save_adapter
from trilora.outputs import check_name
from trilora.run_folder import refuse_if_in_use
from trilora.sampling import sample_images

log = logging.getLogger("trilora")
RUN_FILES = (
    "adapters",
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


def finished_summary(folder: Path) -> dict | None:
    """The summary of a run that trained to its end (or stopped early) and exported its adapter; None
    for a run that has none, or one that a signal stopped (its summary lists the best adapter so far,
    and resuming it goes on)."""
    summary = read_json(folder / "summary.json")
    exported = summary.get("exported")
    if summary.get("interrupted_by") or not isinstance(exported, dict):
        return None
    return summary if Path(str(exported.get("kohya", ""))).is_file() else None


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


def write_adapter(
    path: Path, state: dict, config: RunConfig, step: int, val_loss: float | None, **scores
) -> None:
    """Our checkpoint of the factors as trained (TriLoRA keeps U, Sigma, V^T); `scores` (the
    generation signal, the base model's family and prediction type) are recorded beside them."""
    metadata = {
        "method": config.adapter.method,
        "rank": config.adapter.rank,
        "alpha": config.adapter.resolved_alpha,
        "step": step,
        "val_loss": val_loss,
        "config": to_dict(config),
        **scores,
    }
    if config.adapter.conv_rank is not None:
        metadata |= {"conv_rank": config.adapter.conv_rank, "conv_alpha": config.adapter.resolved_conv_alpha}
    save_adapter(path, state, metadata)


def export_name(config: RunConfig, output: Path) -> str:
    return config.export.name or output.resolve().name


KEPT = "adapters"  # OUTPUT/adapters/step-NNNNNN.safetensors: the adapter of each validated step


def kept_adapter(output: Path, step: int) -> Path:
    return output / KEPT / f"step-{step:06d}.safetensors"


def kept_steps(output: Path) -> list[int]:
    names = (p.name for p in (output / KEPT).glob("step-*.safetensors"))
    return sorted(
        int(n[5:11]) for n in names if n[5:11].isdigit() and len(n) == len("step-000000.safetensors")
    )


def prune_kept(output: Path, keep: str, best_step: int | None) -> None:
    """Delete kept adapters beyond --keep-adapters N (the newest N and the best stay)."""
    if keep == "all":
        return
    steps = kept_steps(output)
    for step in steps[: -int(keep)]:
        if step != best_step:
            kept_adapter(output, step).unlink(missing_ok=True)


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
    pairs, alphas = {}, {}  # alphas: each layer's own, --alpha or (LoCon's 3x3 convs) --conv-alpha
    for part in base.family.parts:
        model = getattr(base.pipe, part)
        pairs |= with_part(part, lora_pairs(model))
        alphas |= with_part(part, {k: layer.alpha for k, layer in adapter_layers(model).items()})
    metadata = export_metadata(config, base.family.header(base.prediction_type), step, val_loss, steps_run)
    sgm = base.pipe.unet.config if base.family.kohya_sgm else None
    return write_exports(output, export_name(config, output), pairs, alphas, metadata, config, sgm, step)


def write_exports(
    output: Path, name: str, pairs: dict, alphas: dict, metadata: dict, config: RunConfig, sgm, step: int
) -> dict:
    """NAME.safetensors (kohya layout; `sgm`: SDXL's UNet config, for the original layout's names,
    the only ones every loader reads) and NAME-diffusers/ in `output`."""
    dtype = DTYPES[config.export.export_dtype]
    kohya_file = output / f"{name}.safetensors"
    save_kohya(kohya_file, pairs, alphas, metadata, dtype, sgm)
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
) -> list:
    """One image per sample prompt with a fixed seed, so samples of two steps differ only by the adapter
    (returned too)."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts, resolution = list(opts.sample_prompt), config.data.resolution
    images = sample_images(pipe, prompts, [config.train.seed] * len(prompts), opts.sample_steps, height=resolution,
                           width=resolution, device=device, autocast=autocast)  # fmt: skip
    for i, image in enumerate(images):
        save_image(image, folder / f"{i:02d}.png")
    write_text(folder / "prompts.txt", "\n".join(opts.sample_prompt) + "\n")
    return images


def export_step(run: Path, step: int) -> dict:
    """`trilora export RUN --step N`: the kept adapter of step N of a run, in both layouts, written
    into the run folder as NAME-step-NNNNNN(.safetensors, -diffusers/); summary.json lists it."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a trilora run folder (it has no config.json): give the --output folder "
                        "of a `trilora train` run")  # fmt: skip
    refuse_if_in_use(run)
    steps = kept_steps(run)
    if step not in steps:
        kept = (
            ", ".join(map(str, steps))
            if steps
            else "none (a run without validation, or from before kept adapters)"
        )
        raise UserError(f"{run} kept no adapter of step {step}: its kept steps are {kept}; --keep-adapters "
                        "decides which validated steps are kept")  # fmt: skip
    source = kept_adapter(run, step)
    _, info = load_adapter(source)
    config = from_dict(read_json(run / "config.json"), str(run / "config.json"))
    family = FAMILIES.get(info.get("family", "sd1"))
    if family is None:
        raise UserError(
            f"{source} names the model family {info.get('family')!r}, which this trilora does not know"
        )
    pairs, alphas = native_pairs(source)
    sgm = unet_config(config, family) if family.kohya_sgm else None
    header = family.header(info.get("prediction_type") or "epsilon")
    metadata = export_metadata(config, header, step, info.get("val_loss"), step)
    name = check_name(
        f"{export_name(config, run)}-step-{step:06d}", f"the export name in {run / 'config.json'}"
    )
    files = write_exports(run, name, pairs, alphas, metadata, config, sgm, step)
    summary_file = run / "summary.json"
    summary = read_json(summary_file)
    summary.setdefault("step_exports", {})[str(step)] = {k: str(v) for k, v in files.items()}
    write_json(summary_file, summary)
    return files


def unet_config(config: RunConfig, family) -> dict:
    """The UNet config of a run's base model (its folder's, its --base-config's, or the family's
    shipped one when those are gone): what SDXL's original-layout names are computed from."""
    file = config_folder(Path(config.model.base), config.model.base_config, family) / "unet" / "config.json"
    return read_json(file if file.is_file() else shipped_configs(family) / "unet" / "config.json")
