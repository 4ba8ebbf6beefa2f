"""`trilora train --dry-run`: trainable parameters, adapter file size and peak GPU memory of a run,
from the model's shapes alone.

Nothing is read but configs: the UNet, text encoder(s) and VAE are built on the meta device from the
--base diffusers folder (or, for a single file, --base-config or the family's shipped configs), the
adapters are added as `setup` adds them, and every figure follows from the tensors' shapes.

What is on the GPU, line by line:

- base weights: the UNet in the training dtype (bf16 under mixed precision, fp32 with
  --mixed-precision no). The text encoder is on the GPU when it is trained (training dtype), when
  captions are encoded at every step (--shuffle-captions, --caption-dropout; fp32), or once samples
  have been drawn: sampling moves it and the VAE (both fp32) to the GPU and they stay there.
  Otherwise the VAE and the text encoder leave the GPU once latents and captions are cached.
- adapter weights and their gradients: fp32, 4 bytes per trainable parameter each. The gradients
  are freed (zero_grad(set_to_none=True)) before validation and sampling.
- optimizer state: AdamW 2 x fp32 = 8 bytes per parameter; 8-bit AdamW 2 x 1 byte for tensors of
  4096 elements or more (bitsandbytes keeps smaller ones, e.g. TriLoRA's Sigma, in fp32); Prodigy
  4 x fp32 (exp_avg, exp_avg_sq, s and the initial weights p0). --ema keeps one more fp32 copy.
- activations: measured on meta tensors at the run's sizes (trilora/training/activations.py): a
  training step with gradient checkpointing off and on; validation, the UNet without gradients on
  one image at --val-timesteps timesteps; sampling, the VAE decoding an image (the UNet's batch of
  2 is below validation's); and, before training, the fp32 VAE encoding as many images at a time as
  `latent_batch` allows (8 at 512 px, 2 at 1024 px) with nothing else on the GPU. The run's peak is the largest of these phases.
- CUDA context and allocator slack: 0.5 GiB (the context with cuBLAS/cuDNN workspaces, 0.3-0.6 GiB
  on recent GPUs) plus 10 % of the peak for the caching allocator's rounding and fragmentation.

One process; with several, each holds the weights and its share of the batch. Not covered:
generating DreamBooth class images (the whole pipeline, before setup).

Unverified against a GPU: no GPU was available when this was written. Compare the figures with
`torch.cuda.max_memory_allocated()` (allocated) and nvidia-smi (total) on a real run and record
them in benchmarks/README.md ("Memory estimate").
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trilora.adapters.inject import adapter_layers, add_run_adapters, trainable_parameters
from trilora.base.detect import config_folder, detect_family, resolve_prediction
from trilora.config import RunConfig
from trilora.data.cache import latent_batch
from trilora.errors import UserError
from trilora.families.family import Family
from trilora.formats.kohya import kohya_name
from trilora.training.activations import (
    MetaScalars,
    inference_bytes,
    latent_size,
    meta_condition,
    training_step_bytes,
    vae_bytes,
)
from trilora.training.export import export_metadata
from trilora.training.placement import estimated_placement

GIB = 1024**3
CUDA_CONTEXT_BYTES = GIB // 2
ALLOCATOR_SLACK = 0.10
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep fp32 state
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
EXPORT_DTYPES = {"fp16": ("F16", 2), "bf16": ("BF16", 2), "fp32": ("F32", 4)}  # safetensors name, bytes

log = logging.getLogger("trilora")


@dataclass
class MetaModels:
    """The run's models on the meta device: base weights in the training dtype, adapters added."""

    unet: nn.Module
    text_encoders: dict[str, nn.Module]  # by part name: "text_encoder" (and SDXL's "text_encoder_2")
    vae: nn.Module
    config_dir: Path
    family: Family


@dataclass
class MemoryEstimate:
    """Bytes on the GPU in each phase of a run; a training step's activations for checkpointing off and on."""

    base_weights: int
    base_weights_what: str  # e.g. "UNet bf16 + text encoder fp32"
    adapter_weights: int
    gradients: int
    optimizer_state: int
    optimizer_what: str
    ema: int
    activations: dict[bool, int]  # a training step's, gradient checkpointing off/on, at the run's batch
    validation: int  # activations of a validation batch (no gradients); 0 without validation
    sampling: int  # activations of decoding a sample image; 0 without --sample-prompt
    latent_caching: int  # VAE weights and activations while latents are encoded, before training
    checkpointing: bool  # the run's setting

    def phases(self, checkpointing: bool) -> dict[str, int]:
        """Bytes allocated at the peak of each phase of the run."""
        kept = self.base_weights + self.adapter_weights + self.optimizer_state + self.ema
        phases = {
            "training step": kept + self.gradients + self.activations[checkpointing],
            "validation": kept + self.validation if self.validation else 0,
            "sampling": kept + self.sampling if self.sampling else 0,
            "latent caching": self.latent_caching,
        }
        return {name: value for name, value in phases.items() if value}

    def allocated(self, checkpointing: bool) -> int:
        """What torch.cuda.max_memory_allocated() should show at the end of the run."""
        return max(self.phases(checkpointing).values())

    def total(self, checkpointing: bool) -> int:
        """What nvidia-smi should show: the peak plus the CUDA context and the allocator's slack."""
        allocated = self.allocated(checkpointing)
        return allocated + CUDA_CONTEXT_BYTES + round(ALLOCATOR_SLACK * allocated)


def resolve_resolution(config: RunConfig) -> None:
    """--resolution, when not given, becomes the base model family's default (read from the model's
    configs, nothing loaded) before anything uses it; config.json records the value used."""
    if config.data.resolution is None:
        from trilora.base.detect import default_resolution  # torch and the model's headers: after the checks

        config.data.resolution = default_resolution(config.model)
        log.info("--resolution %d: the base model family's default", config.data.resolution)


def dry_run_report(config: RunConfig) -> str:
    """What `trilora train --dry-run` prints: parameters, adapter file size, the memory table."""
    config.validate()
    models = meta_models(config)
    return format_report(config, models, estimate_memory(models, config))


def format_report(config: RunConfig, models: MetaModels, estimate: MemoryEstimate) -> str:
    unet = models.unet
    adapter, data = config.adapter, config.data
    count = sum(p.numel() for p in trained_parameters(models))
    names = {"unet": "UNet", "text_encoder": "text-encoder", "text_encoder_2": "second text-encoder"}
    layers = [f"{len(adapter_layers(m))} {names[part]} layers" for part, m in trained_models(models).items()]
    file_bytes = adapter_file_bytes(models, config)
    side = latent_size(models.vae, data.resolution)
    alpha = adapter.resolved_alpha
    convs = [
        layer for layer in adapter_layers(unet).values() if layer.is_conv and layer.base.kernel_size != (1, 1)
    ]
    if convs:  # LoCon
        layers[0] += f" ({len(convs)} of them 3x3 convs at rank {convs[0].rank}, alpha {convs[0].alpha:g})"
    folded = ", TriLoRA's Sigma folded into up" if adapter.method == "trilora" else ""
    return "\n".join([
        f"dry run of {config.model.base} ({models.family}; configs: {models.config_dir}): nothing loaded, "
        "nothing trained",
        f"adapters: {adapter.method} rank {adapter.rank}, alpha {alpha:g}, on {' and '.join(layers)}",
        f"trainable parameters: {count:,} ({count / 1e6:.2f} M)",
        f"adapter file: {file_bytes / 1024**2:.2f} MiB ({file_bytes:,} bytes: kohya layout, "
        f"{config.export.export_dtype}{folded})",
        "",
        f"estimated peak GPU memory: batch {config.train.batch_size}, {data.resolution}x{data.resolution} px "
        f"({side}x{side} latents), {'bf16 autocast' if uses_bf16(config) else 'fp32'}",
        memory_table(estimate, config),
        cache_line(config, models),
        "Activations are measured on the meta device (trilora/training/activations.py); the figures are",
        "not yet checked against a GPU.",
    ])  # fmt: skip


def cache_bytes_per_image(config: RunConfig, models: MetaModels) -> tuple[int, int]:
    """Bytes of the training cache per training and per validation image, as setup.py builds it (fp32):
    the latent, the caption's conditioning when captions are encoded once (token ids otherwise, for
    validation), the size conditioning, and for validation the fixed noise at each validation timestep."""
    data = config.data
    side = latent_size(models.vae, data.resolution)
    latent = models.vae.config.latent_channels * side * side * 4 + 6 * 4
    per_step = config.adapter.train_text_encoder or data.shuffle_captions or data.caption_dropout > 0
    with torch.no_grad():
        embedding = meta_condition(models, 1)[0].numel() * 4
    tokens = math.prod(models.family.token_shape) * 8
    train = latent + (0 if per_step else embedding)
    val = latent * (1 + config.validation.val_timesteps) + (tokens if per_step else embedding)
    return train, val


def cache_line(config: RunConfig, models: MetaModels) -> str:
    train, val = cache_bytes_per_image(config, models)
    return (f"cache (not in the table): {train / 1024**2:.2f} MiB per training image, {val / 1024**2:.2f} MiB "
            "per validation image, kept on\nthe GPU when it takes under a tenth of its free memory "
            "(--cache-on-device / --no-cache-on-device)")  # fmt: skip


def memory_table(estimate: MemoryEstimate, config: RunConfig) -> str:
    """The estimate's lines, one column per gradient-checkpointing setting, the run's marked."""
    both = (False, True)
    unit, scale = ("GiB", GIB) if estimate.allocated(False) >= GIB else ("MiB", 1024**2)
    phase_rows = {
        "training step": "training step",
        "validation": f"validation ({config.validation.val_timesteps} timesteps, no grad)",
        "sampling": "sampling (VAE decode, no grad)",
        "latent caching": "latent caching (fp32 VAE)",
    }
    rows = [
        (f"base weights ({estimate.base_weights_what})", estimate.base_weights),
        ("adapter weights (fp32)", estimate.adapter_weights),
        ("gradients (fp32)", estimate.gradients),
        (f"optimizer state ({estimate.optimizer_what})", estimate.optimizer_state),
        *([("EMA of the adapter weights (fp32)", estimate.ema)] if estimate.ema else []),
        ("activations of a training step", estimate.activations),
        *[(f"allocated: {phase_rows[name]}", {on: estimate.phases(on)[name] for on in both})
          for name in estimate.phases(False)],
        ("peak allocated (max_memory_allocated)", {on: estimate.allocated(on) for on in both}),
        (f"CUDA context {CUDA_CONTEXT_BYTES / GIB:g} GiB + {ALLOCATOR_SLACK:.0%} slack",
         {on: estimate.total(on) - estimate.allocated(on) for on in both}),
        ("peak total (nvidia-smi)", {on: estimate.total(on) for on in both}),
    ]  # fmt: skip
    columns = [
        ("on" if on else "off") + (" (this run)" if on == estimate.checkpointing else "") for on in both
    ]
    width, widths = max(len(label) for label, _ in rows) + 2, [max(len(c), 9) + 4 for c in columns]
    lines = [" " * width + "gradient checkpointing".rjust(sum(widths)),
             " " * width + "".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]  # fmt: skip
    for label, value in rows:
        values = value if isinstance(value, dict) else dict.fromkeys(both, value)
        cells = [f"{values[on] / scale:.2f} {unit}".rjust(w) for on, w in zip(both, widths, strict=True)]
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def uses_bf16(config: RunConfig) -> bool:
    """Whether the estimated run steps in bf16 autocast (placement.py decides, for set-up too)."""
    return estimated_placement(config).autocast is not None


def model_config_dir(config: RunConfig) -> tuple[Path, Family]:
    """(the diffusers-layout folder whose configs describe --base, its family), checked as `load_base` checks."""
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.base.load import check_config_dir, check_fits, expected_ldm_shapes

    base, model = Path(config.model.base), config.model
    family, found = detect_family(base, model.base_config, model.family)
    config_dir = config_folder(base, model.base_config, family)
    resolve_prediction(
        base, config_dir, family, model.base_config, model.prediction_type, found
    )  # as set-up refuses
    if base.is_dir():
        return base, family
    check_config_dir(base, config_dir, family)
    check_fits(base, found["shapes"], expected_ldm_shapes(base, config_dir, family), config_dir, family)
    return config_dir, family


def meta_models(config: RunConfig) -> MetaModels:
    """The UNet, text encoder(s) and VAE of the run on the meta device, with adapters as `setup` adds them."""
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.base.load import models_on_meta

    config_dir, family = model_config_dir(config)
    resolve_resolution(config)
    try:
        models = models_on_meta(config_dir, family)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"cannot build the model from the configs in {config_dir}: {error}") from error
    unet, vae = models.pop("unet"), models.pop("vae")
    adapter = config.adapter
    weight_dtype = estimated_placement(config).weight_dtype
    # Sigma's initial values change no shape: "identity" spares an SVD per layer.
    with MetaScalars():
        unet.to(weight_dtype)
        if adapter.train_text_encoder:
            for model in models.values():
                model.to(weight_dtype)
        add_run_adapters(unet, models, adapter, sigma="identity")
    return MetaModels(unet, models, vae, config_dir, family)


def trained_models(models: MetaModels) -> dict[str, nn.Module]:
    texts = {part: model for part, model in models.text_encoders.items() if adapter_layers(model)}
    return {"unet": models.unet} | texts


def trained_parameters(models: MetaModels) -> list[nn.Parameter]:
    return [p for model in trained_models(models).values() for p in trainable_parameters(model)]


def estimate_memory(models: MetaModels, config: RunConfig) -> MemoryEstimate:
    """Peak GPU memory of each phase of `config`'s run (the module docstring says what each line holds).

    The models are `meta_models(config)`'s: base weights in the training dtype, adapters added.
    """
    unet, vae = models.unet, models.vae

    data, adapter, opts, validation = config.data, config.adapter, config.train, config.validation
    place = estimated_placement(config)
    bf16 = place.autocast is not None
    base, what = 0, []
    texts = list(models.text_encoders.values())
    text_name = "text encoders" if len(texts) > 1 else "text encoder"
    for name, parts, dtype in [("UNet", [unet], place.weight_dtype), (text_name, texts, place.text_encoder),
                               ("VAE", [vae], place.vae)]:  # fmt: skip
        if dtype is not None:
            base += sum(frozen_numel(model) for model in parts) * dtype.itemsize
            what.append(f"{name} {DTYPE_NAMES[dtype]}")
    params = trained_parameters(models)
    count = sum(p.numel() for p in params)
    optimizer, optimizer_what = optimizer_state_bytes(params, opts.optimizer)
    side = latent_size(vae, data.resolution)
    step = {
        checkpointing: training_step_bytes(models, side, bf16, checkpointing, adapter.train_text_encoder,
                                           opts.batch_size)
        for checkpointing in (False, True)
    }  # fmt: skip
    validates = bool(data.val_data) or data.val_fraction > 0
    encode_batch = latent_batch(data.resolution**2)
    return MemoryEstimate(
        base_weights=base,
        base_weights_what=" + ".join(what),
        adapter_weights=4 * count,
        gradients=4 * count,
        optimizer_state=optimizer,
        optimizer_what=optimizer_what,
        ema=4 * count if opts.ema else 0,
        activations=step,
        validation=inference_bytes(models, side, bf16, validation.val_timesteps) if validates else 0,
        sampling=vae_bytes(vae, data.resolution, bf16, decode=True) if validation.sample_prompt else 0,
        latent_caching=frozen_numel(vae) * 4 + vae_bytes(vae, data.resolution, False, False, encode_batch),
        checkpointing=opts.gradient_checkpointing,
    )


def frozen_numel(model: nn.Module) -> int:
    """Parameters and buffers of a model, its adapters' trainable weights left out."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors) - sum(p.numel() for p in trainable_parameters(model))


def optimizer_state_bytes(params: list[torch.Tensor], optimizer: str) -> tuple[int, str]:
    """Bytes of the optimiser's per-parameter state, and what they are."""
    if optimizer == "adamw8bit":
        total = sum(2 * p.numel() if p.numel() >= BNB_MIN_8BIT_SIZE else 8 * p.numel() for p in params)
        return total, "8-bit AdamW: 2 x 1 byte"
    if optimizer == "prodigy":
        return 16 * sum(p.numel() for p in params), "Prodigy: 4 x fp32"
    return 8 * sum(p.numel() for p in params), "AdamW: 2 x fp32"


def adapter_file_bytes(models: MetaModels, config: RunConfig) -> int:
    """Size of the exported kohya file: per module the LoRA pair in the export dtype (TriLoRA's Sigma
    folds into up, so its file is a LoRA's) and an fp32 alpha, plus the safetensors header."""

    family = models.family
    dtype, itemsize = EXPORT_DTYPES[config.export.export_dtype]
    sgm = models.unet.config if family.kohya_sgm else None
    tensors = {}  # name -> (dtype, shape, bytes per element)
    for part, model in trained_models(models).items():
        for path, layer in adapter_layers(model).items():
            name = kohya_name(f"{part}.{path}", sgm)
            tensors[f"{name}.lora_down.weight"] = (dtype, layer.down.weight.shape, itemsize)
            tensors[f"{name}.lora_up.weight"] = (dtype, layer.up.weight.shape, itemsize)
            tensors[f"{name}.alpha"] = ("F32", (), 4)
    # in the file's order (safetensors: the widest dtype first, then by name), so the offsets' digits match
    header, offset = {}, 0
    for name, (kind, shape, size) in sorted(tensors.items(), key=lambda item: (-item[1][2], item[0])):
        end = offset + math.prod(shape) * size
        header[name] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    steps = config.train.steps or 1000  # typical values for what only training knows
    family_header = family.header(config.model.prediction_type or "epsilon")  # v adds 3 bytes at most
    header["__metadata__"] = export_metadata(config, family_header, steps, 0.1234567890123456, steps)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + -(-len(text) // 8) * 8 + offset  # length, the header padded to 8 bytes, the data


GUARD_PIXELS = 4 * 512 * 512  # images x pixels per step below which no run is absurd on any machine
GUARD_FACTOR = 2.0  # refuse when the estimate is this many times what the device has
SKIP_GUARD = "TRILORA_SKIP_MEMORY_CHECK"


def device_memory(device: torch.device) -> int | None:
    """Bytes the device has: a GPU's total memory, or the host's RAM for the CPU (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_absurd_memory(config: RunConfig, device: torch.device) -> None:
    """The resource guard: a run whose estimated peak is far beyond the device is refused before any
    work, in one line that says what to lower and how to go ahead anyway. Small runs skip the estimate."""
    pixels = config.train.batch_size * config.data.resolution**2
    if pixels <= GUARD_PIXELS or os.environ.get(SKIP_GUARD):
        return
    have = device_memory(device)
    models = meta_models(config)
    needed = estimate_memory(models, config).allocated(config.train.gradient_checkpointing)
    if have and needed > GUARD_FACTOR * have:
        raise UserError(f"this run needs about {needed / 2**30:.0f} GiB on {device} (--batch-size "
                        f"{config.train.batch_size} at --resolution {config.data.resolution}), far more than its "
                        f"{have / 2**30:.0f} GiB: lower them or add --gradient-checkpointing (`--dry-run` shows the "
                        f"estimate); to go ahead anyway, set {SKIP_GUARD}=1")  # fmt: skip
