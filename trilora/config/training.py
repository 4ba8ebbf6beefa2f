"""The training run's sections of the tree: what `trilora train` reads and saves as config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trilora.config.fields import build, iter_fields, opt
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.families import FAMILY_CHOICES, PREDICTION_TYPES

METHODS = ("lora", "trilora")


@dataclass
class ModelConfig:
    base: str = opt(
        "",
        "Base model: a diffusers folder (model_index.json) or a single-file checkpoint (.safetensors) "
        "of a family trilora trains (SD 1.x, SD 2.x).",
        path=True,
    )
    base_config: str | None = opt(
        None,
        "A diffusers folder of configs for a single-file checkpoint shaped unlike its family's shipped configs.",
        path=True,
    )
    family: str = opt("auto", "Model family of --base: auto (detected from the model, and logged) or one by name.",
                      choices=FAMILY_CHOICES)  # fmt: skip
    prediction_type: str | None = opt(
        None,
        "What the model predicts: epsilon or v_prediction (SD 2.x 768 px models). Default: from the "
        "model's configs or marker; an SD 2.x single file needs it.",
        choices=PREDICTION_TYPES,
    )
    zero_terminal_snr: bool = opt(False, "Rescale the noise schedule to zero terminal SNR (for v-prediction "
                                  "models trained so; a file's ztsnr marker sets it).")  # fmt: skip


@dataclass
class DataConfig:
    data: str = opt(
        "",
        "Folder of training images with same-named .txt captions; `N_name` subfolders repeat N times.",
        path=True,
    )
    val_data: str | None = opt(
        None, "Folder of validation images (default: hold out --val-fraction of --data).", path=True
    )
    val_fraction: float = opt(
        0.1, "Fraction of --data held out for validation when --val-data is not given.", low=0, high=0.99
    )
    trigger: str | None = opt(None, "A word put in front of every caption.")
    resolution: int | None = opt(
        None,
        "Training size: about resolution² pixels per image (square without buckets). Default: the model "
        "family's, 768 for SD 2.x v-prediction models, else 512 (check-data: 512).",
        low=8,
        high=4096,
    )
    buckets: bool | None = opt(
        None, "Aspect-ratio buckets of about resolution² pixels (default: on when images differ in shape)."
    )
    caption_extension: str = opt(".txt", "Extension of the caption file beside each image.")
    shuffle_captions: bool = opt(False, "Shuffle the comma-separated tags of each caption at every step.")
    keep_tokens: int = opt(0, "With --shuffle-captions, keep the first N tags in place.", low=0, high=1000)
    caption_dropout: float = opt(0.0, "Train on an empty caption with this probability.", low=0, high=1)
    dataset_config: str | None = opt(
        None, "TOML file of several subsets (folder, repeats, trigger, is_reg).", path=True
    )
    cache_latents: str = opt(
        "memory",
        "Keep VAE latents in memory, or also on disk (reused across runs).",
        choices=("memory", "disk"),
    )
    class_data: str | None = opt(None, "DreamBooth prior preservation: folder of class images.", path=True)
    class_prompt: str | None = opt(None, "Caption of the class images (and prompt to generate missing ones).")
    num_class_images: int = opt(
        0, "Class images wanted; missing ones are generated with the base model.", low=0, high=100000
    )
    prior_loss_weight: float = opt(1.0, "Weight of the class images' loss.", low=0, high=1000)


@dataclass
class AdapterConfig:
    method: str = opt("trilora", "Adapter type.", choices=METHODS)
    rank: int = opt(16, "Adapter rank r.", low=1, high=1024)
    alpha: float | None = opt(
        None,
        "Adapter alpha; the update is scaled by alpha/rank (default: alpha = rank).",
        low=1e-6,
        high=1e6,
    )
    sigma_init: str = opt(
        "svd",
        "TriLoRA: initialise Sigma from the frozen weight's singular values, or as identity.",
        choices=("svd", "identity"),
    )
    train_text_encoder: bool = opt(
        False, "Also adapt the text encoder(s), SDXL's both (q/k/v/out_proj, fc1/fc2)."
    )
    dropout: float = opt(0.0, "Dropout on the adapters' inputs during training.", low=0, high=0.99)
    conv_rank: int | None = opt(
        None, "LoCon: also adapt the ResNet blocks' 3x3 convolutions with this rank.", low=1, high=1024
    )
    conv_alpha: float | None = opt(
        None, "Alpha of the 3x3-convolution adapters (default: conv rank).", low=1e-6, high=1e6
    )

    @property
    def resolved_alpha(self) -> float:
        """Alpha of the attention (and text-encoder) adapters: --alpha, else the rank (scale 1)."""
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def resolved_conv_alpha(self) -> float | None:
        """Alpha of LoCon's 3x3-conv adapters: --conv-alpha, else the conv rank; None without them."""
        if self.conv_rank is None:
            return None
        return float(self.conv_alpha if self.conv_alpha is not None else self.conv_rank)


@dataclass
class TrainConfig:
    lr: float = opt(1e-4, "AdamW learning rate.", low=1e-12, high=10)
    lr_scheduler: str = opt(
        "constant", "Learning-rate schedule after warm-up.", choices=("constant", "cosine")
    )
    warmup_steps: int = opt(0, "Linear warm-up steps.", low=0, high=10000000)
    batch_size: int = opt(1, "Images per optimiser step (before gradient accumulation).", low=1, high=1024)
    grad_accum: int = opt(1, "Batches accumulated per optimiser step.", low=1, high=1024)
    steps: int | None = opt(
        None,
        "Optimiser steps to run (default: from --epochs, or 1000).",
        resumable=True,
        low=1,
        high=10000000,
    )
    epochs: int | None = opt(
        None,
        "Passes over the training set (used when --steps is not given).",
        resumable=True,
        low=1,
        high=100000,
    )
    weight_decay: float = opt(1e-2, "AdamW weight decay on the adapter weights.", low=0, high=10)
    lr_text_encoder: float | None = opt(
        None, "Learning rate of the text-encoder adapters (default: --lr).", low=0, high=10
    )
    lr_text_encoder_2: float | None = opt(
        None, "SDXL: learning rate of the second text encoder's adapters (default: --lr-text-encoder).",
        low=0, high=10,
    )  # fmt: skip
    optimizer: str = opt(
        "adamw",
        "adamw8bit needs bitsandbytes, prodigy needs prodigyopt.",
        choices=("adamw", "adamw8bit", "prodigy"),
    )
    max_grad_norm: float = opt(
        1.0, "Clip the adapters' gradient norm to this (0 = no clipping).", low=0, high=1e6
    )
    min_snr_gamma: float | None = opt(
        None, "Min-SNR loss weighting with this gamma (Hang et al. 2023; 5 is usual).", low=1e-6, high=1000
    )
    noise_offset: float = opt(
        0.0, "Offset noise strength (0.05-0.1 helps very dark or bright images).", low=0, high=1
    )
    ema: float | None = opt(None, "Exponential moving average of the adapter weights with this decay (e.g. 0.999), "
                                  "used for validation and export.", low=0.5, high=0.999999)  # fmt: skip
    seed: int = opt(
        0,
        "Seed of everything: validation split, initialisation, noise, data order.",
        low=0,
        high=2**63 - 1,
    )
    gradient_checkpointing: bool = opt(
        False, "Recompute UNet activations in the backward pass to save memory."
    )
    mixed_precision: str = opt(
        "auto",
        "bf16 autocast with fp32 adapter weights; auto = bf16 on CUDA, fp32 on CPU.",
        choices=("auto", "no", "bf16"),
    )
    device: str = opt("auto", "Device to train on: auto, cpu, cuda, cuda:N.", resumable=True)
    compile: bool = opt(False, "torch.compile the UNet's transformer blocks (regional compilation: one "
                        "graph per block shape, so compiling stays short); off until measured on a GPU.")  # fmt: skip
    cuda_graphs: bool = opt(False, "With --compile, replay each compiled block as a CUDA graph (torch.compile's "
                            "reduce-overhead mode: fewer kernel launches); off until measured on a GPU.")  # fmt: skip
    channels_last: bool = opt(False, "Keep the UNet's convolution activations channels-last (faster on "
                              "tensor cores); off until measured on a GPU.")  # fmt: skip
    cache_on_device: bool | None = opt(None, "Keep the cached latents and caption embeddings on the training "
                                       "device, so no step copies them (default: on CUDA when they take under "
                                       "a tenth of its free memory).", resumable=True)  # fmt: skip


@dataclass
class ValidationConfig:
    validate_every: int = opt(
        50, "Measure the validation loss every N optimiser steps.", low=1, high=10000000
    )
    val_timesteps: int = opt(
        8, "Timesteps per validation image, spread evenly over the schedule.", low=1, high=1000
    )
    patience: int = opt(
        0,
        "Stop after this many validations without improvement; 0 = train to --steps and keep the best "
        "(the default: the long toy bench's chosen rule).",
        resumable=True,
        low=0,
        high=100000,
    )
    min_delta: float = opt(
        0.0,
        "An improvement must lower the validation loss by more than this.",
        resumable=True,
        low=0,
        high=1e6,
    )
    stop_on: str = opt(
        "auto",
        "What early stopping and the best checkpoint follow: generation (held-out prompts sampled and "
        "scored at each validation: by the toy judge on the toy base, else by CLIP score with --clip-model), "
        "val_loss (all timesteps), val_loss_mid (the middle half of the schedule only) or val_loss_se (a "
        "validation counts against patience only when its loss rises above the best by more than its "
        "standard error); auto = generation where a scorer is at hand, else val_loss. Measured in "
        "benchmarks/toy/long.",
        choices=("auto", "generation", "val_loss", "val_loss_mid", "val_loss_se"),
    )
    stop_window: int = opt(
        3,
        "Stopping and the best checkpoint follow the mean of the last N validations' values (1 = each "
        "alone): a noisy signal's lucky spike does not become the best. Measured in benchmarks/toy/long.",
        resumable=True,
        low=1,
        high=1000,
    )
    signal_prompt: list[str] = opt(
        [],
        "Held-out prompt for the generation signal (repeatable; default: up to 16 validation captions).",
        repeat=True,
    )
    clip_model: str | None = opt(
        None,
        "A local CLIP folder (e.g. openai/clip-vit-large-patch14) that scores the generation signal "
        "on real models.",
        metavar="DIR",
        path=True,
    )
    sample_prompt: list[str] = opt(
        [], "Prompt to sample at each validation (repeatable).", repeat=True, resumable=True
    )
    sample_steps: int = opt(
        20, "Denoising steps for the validation samples.", resumable=True, low=1, high=1000
    )
    sample_every: int | None = opt(
        None, "Also write samples every N steps, between validations.", low=1, high=10000000
    )


@dataclass
class CheckpointConfig:
    checkpoint_every: int = opt(
        250,
        "Save the full training state every N steps (0 = only on Ctrl-C).",
        resumable=True,
        low=0,
        high=10000000,
    )
    keep_checkpoints: int = opt(
        2, "How many checkpoints to keep (older ones are deleted).", resumable=True, low=1, high=1000
    )
    keep_adapters: str = opt(
        "all",
        "Keep the adapter of every validated step in OUTPUT/adapters/ (all), or of the last N and the best; "
        "`trilora export OUTPUT --step S` exports any kept one.",
        resumable=True,
        metavar="N|all",
    )
    resume: str | None = opt(
        None,
        "Resume from OUTPUT (its latest checkpoint) or OUTPUT/checkpoints/step-N; the run continues in "
        "that folder, or in --output if given (a new folder; the original is left as it is).",
        resumable=True,
        saved=False,
        path=True,
    )
    overwrite: bool = opt(
        False,
        "Replace an earlier run in --output: its files are deleted first (default: refuse).",
        resumable=True,
        saved=False,
    )


@dataclass
class ExportConfig:
    name: str | None = opt(
        None, "Name of the exported file (default: the output folder's name).", resumable=True
    )
    export: str = opt("best", "Which adapter to export.", choices=("best", "last"), resumable=True)
    export_dtype: str = opt(
        "fp16", "Precision of the exported files.", choices=("fp16", "bf16", "fp32"), resumable=True
    )


@dataclass
class RunConfig:
    output: str = opt("", "Output folder of the run.", resumable=True, metavar="DIR", path=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> None:
        """Reject impossible settings early, with a message that says what to change."""
        checks = [
            (self.adapter.rank >= 1, f"--rank must be at least 1, got {self.adapter.rank}"),
            (self.adapter.alpha is None or self.adapter.alpha > 0, "--alpha must be positive"),
            (
                0 <= self.data.val_fraction < 1,
                f"--val-fraction must be in [0, 1), got {self.data.val_fraction}",
            ),
            (
                self.data.resolution is None or (self.data.resolution >= 8 and self.data.resolution % 8 == 0),
                f"--resolution must be a positive multiple of 8, got {self.data.resolution}",
            ),
            (self.train.lr > 0, f"--lr must be positive, got {self.train.lr}"),
            (self.train.batch_size >= 1, "--batch-size must be at least 1"),
            (self.train.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.train.steps is None or self.train.steps >= 1, "--steps must be at least 1"),
            (self.train.epochs is None or self.train.epochs >= 1, "--epochs must be at least 1"),
            (self.train.warmup_steps >= 0, "--warmup-steps must be 0 or more"),
            (
                self.train.compile or not self.train.cuda_graphs,
                "--cuda-graphs replays compiled blocks: add --compile",
            ),
            (self.validation.validate_every >= 1, "--validate-every must be at least 1"),
            (self.validation.val_timesteps >= 1, "--val-timesteps must be at least 1"),
            (self.validation.patience >= 0, "--patience must be 0 or more"),
            (0 <= self.adapter.dropout < 1, "--dropout must be in [0, 1)"),
            (self.train.max_grad_norm >= 0, "--max-grad-norm must be 0 or more"),
            (
                self.train.min_snr_gamma is None or self.train.min_snr_gamma > 0,
                "--min-snr-gamma must be positive",
            ),
            (
                self.train.lr_text_encoder is None or self.train.lr_text_encoder >= 0,
                "--lr-text-encoder must be >= 0",
            ),
            (self.checkpoint.checkpoint_every >= 0, "--checkpoint-every must be 0 or more"),
            (self.checkpoint.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
            (
                self.checkpoint.keep_adapters == "all"
                or (
                    self.checkpoint.keep_adapters.isdigit()
                    and 1 <= int(self.checkpoint.keep_adapters) <= 10**6
                ),
                f"--keep-adapters must be all or a number from 1 to 1000000, got {self.checkpoint.keep_adapters!r}",
            ),
            (
                not (self.checkpoint.overwrite and self.checkpoint.resume),
                "--overwrite and --resume contradict each other: resume keeps the run, overwrite deletes it",
            ),
            (
                self.adapter.conv_rank is None or self.adapter.conv_rank >= 1,
                f"--conv-rank must be at least 1, got {self.adapter.conv_rank} (leave it out to adapt no 3x3 convs)",
            ),
            (self.adapter.conv_alpha is None or self.adapter.conv_alpha > 0, "--conv-alpha must be positive"),
            (
                self.adapter.conv_alpha is None or self.adapter.conv_rank is not None,
                "--conv-alpha needs --conv-rank (the 3x3-conv adapters it scales)",
            ),
            (
                self.validation.sample_steps >= 1,
                f"--sample-steps must be at least 1, got {self.validation.sample_steps}",
            ),
            (
                self.validation.sample_every is None or self.validation.sample_every >= 1,
                "--sample-every must be at least 1",
            ),
            (self.validation.min_delta >= 0, "--min-delta must be 0 or more"),
            (self.train.weight_decay >= 0, "--weight-decay must be 0 or more"),
            (self.train.noise_offset >= 0, "--noise-offset must be 0 or more"),
            (self.data.prior_loss_weight >= 0, "--prior-loss-weight must be 0 or more"),
            (
                bool(self.model.base),
                "no base model: pass --base PATH (a diffusers folder or a .safetensors file)",
            ),
            (bool(self.data.data or self.data.dataset_config), "no training data: pass --data DIR"),
            (self.data.keep_tokens >= 0, "--keep-tokens must be 0 or more"),
            (0 <= self.data.caption_dropout <= 1, "--caption-dropout must be in [0, 1]"),
            (self.data.num_class_images >= 0, "--num-class-images must be 0 or more"),
            (
                not self.data.class_data or bool(self.data.class_prompt),
                "--class-data needs --class-prompt (the caption of the class images)",
            ),
            (self.train.ema is None or 0 < self.train.ema < 1, "--ema must be a decay in (0, 1), e.g. 0.999"),
            (bool(self.output), "no output folder: pass --output DIR"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        paths = [("base model", self.model.base), ("--base-config folder", self.model.base_config),
                 ("data folder", self.data.data), ("validation folder", self.data.val_data),
                 ("dataset config", self.data.dataset_config)]  # fmt: skip
        for what, path in paths:
            if path and not Path(path).exists():
                raise UserError(f"{what} not found: {path}")

        resolve_device(self.train.device)  # a bad --device stops here, before anything is written


def resumable_keys() -> set[str]:
    """The settings (`section.name`, or `output`) that may change on resume: declared on each field."""
    return {
        f"{section}.{f.name}" if section else f.name
        for section, f, _ in iter_fields(RunConfig)
        if f.metadata["resumable"]
    }


def unsaved_keys() -> set[str]:
    """The settings that say how a run was started (--resume, --overwrite), not what it is."""
    return {
        f"{section}.{f.name}" if section else f.name
        for section, f, _ in iter_fields(RunConfig)
        if not f.metadata["saved"]
    }


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A training run's settings from nested sections; unknown sections or keys are an error naming them."""
    return build(RunConfig, data, source, "`trilora train --help`")
