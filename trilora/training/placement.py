"""Where set-up puts each model and in which dtype: one plan, from the run's settings, that set-up
follows and the `--dry-run` estimator counts (so the two cannot drift apart).

- bf16 autocast with --mixed-precision bf16, or auto on a CUDA device; the frozen UNet (and a trained
  text encoder) are stored in the training dtype, adapters stay fp32;
- captions are encoded at every step when the text encoder trains or --shuffle-captions /
  --caption-dropout change them; otherwise once, and the text encoder leaves the device;
- the VAE leaves the device once latents are cached;
- drawing images (--sample-prompt, the generation stopping signal) brings the VAE and the text
  encoder back, in fp32, and they stay.
"""

from dataclasses import dataclass

import torch

from trilora.config import RunConfig


@dataclass(frozen=True)
class Placement:
    autocast: torch.dtype | None  # the autocast dtype of the step, None for fp32
    weight_dtype: torch.dtype  # the frozen UNet's, and a trained text encoder's
    captions_per_step: bool  # token ids cached, the text encoder runs at every step
    text_encoder: torch.dtype | None  # its dtype on the device while training; None: off the device
    vae: torch.dtype | None  # the same for the VAE


def placement(config: RunConfig, device_type: str, draws_images: bool) -> Placement:
    """The plan for a run on a `device_type` device ("cuda", "cpu", ...); `draws_images`: whether
    it samples images during training (sample prompts or the generation signal)."""
    opts, data, adapter = config.train, config.data, config.adapter
    bf16 = opts.mixed_precision == "bf16" or (opts.mixed_precision == "auto" and device_type == "cuda")
    weight_dtype = torch.bfloat16 if bf16 else torch.float32
    per_step = adapter.train_text_encoder or data.shuffle_captions or data.caption_dropout > 0
    if adapter.train_text_encoder:
        text_encoder = weight_dtype
    else:
        text_encoder = torch.float32 if per_step or draws_images else None
    return Placement(
        autocast=torch.bfloat16 if bf16 else None,
        weight_dtype=weight_dtype,
        captions_per_step=per_step,
        text_encoder=text_encoder,
        vae=torch.float32 if draws_images else None,
    )


def estimated_placement(config: RunConfig) -> Placement:
    """The plan the `--dry-run` estimator counts: a CUDA device unless --device cpu, and images drawn
    when sample prompts are given or the generation signal will run (--clip-model, or --stop-on
    generation; the toy judge's signal on the toy base is not foreseen from the settings)."""
    v = config.validation
    signal = bool(v.clip_model) or v.stop_on == "generation"
    device_type = "cpu" if config.train.device == "cpu" else "cuda"
    return placement(config, device_type, bool(v.sample_prompt) or signal)
