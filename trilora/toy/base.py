"""The toy world's miniature base model: Stable Diffusion 1.x's architecture, trained on four styles.

Same classes and wiring as SD 1.5 (AutoencoderKL, CLIPTextModel with the real CLIP tokenizer,
UNet2DConditionModel with cross-attention, SD's scaled-linear noise schedule with epsilon
prediction), sized so that `scripts/pretrain_toy_base.py` trains it from scratch on a 2-core CPU
in about an hour. Images are 32x32; the VAE halves that to 16x16x4 latents. The weights ship in
the package as an fp16 diffusers folder (`trilora/toy/base/`).
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from trilora.errors import UserError
from trilora.families.sd1 import CONFIGS as SD15_CONFIGS
from trilora.families.tiny import CLIP_TEXT, sd_pipeline

TOY_BASE = Path(__file__).with_name("base")
RESOLUTION = 32

TOY_VAE = dict(
    sample_size=RESOLUTION,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)
TOY_UNET = dict(
    sample_size=RESOLUTION // 2,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=16,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
)
TOY_TEXT = CLIP_TEXT | dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


def build_toy_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The untrained miniature pipeline, identical for identical seeds."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TOY_VAE)  # this order of construction is what initialised the shipped weights
    text_encoder = CLIPTextModel(CLIPTextConfig(**TOY_TEXT))
    unet = UNet2DConditionModel(**TOY_UNET)
    return sd_pipeline(unet, vae, text_encoder, SD15_CONFIGS)


def toy_base(base: str | Path | None) -> Path:
    """`--base` of the demo and the bench: a toy-world base model folder, by default the shipped one."""

    if base is None:
        return toy_base_path()
    base = Path(base)
    if not (base / "model_index.json").is_file():
        raise UserError(f"toy base model not found at {base}: give a diffusers folder (model_index.json) "
                        "written by scripts/pretrain_toy_base.py")  # fmt: skip
    if not same_architecture(base, toy_base_path()):
        raise UserError(f"{base} is not a toy-world base model (its UNet differs from the shipped one's); the "
                        "toy judge scores only the toy world: give a folder written by scripts/pretrain_toy_base.py")  # fmt: skip
    return base


def same_architecture(base: Path, shipped: Path) -> bool:
    """Whether `base`'s UNet config matches the shipped toy base's (weights may differ: a retrained base)."""

    keys = ("block_out_channels", "cross_attention_dim", "sample_size", "in_channels", "layers_per_block")
    try:
        mine, toy = (json.loads((folder / "unet" / "config.json").read_text()) for folder in (base, shipped))
    except (OSError, ValueError):
        return False
    return isinstance(mine, dict) and all(mine.get(k) == toy.get(k) for k in keys)


def toy_base_path() -> Path:
    """The shipped base model's folder; a clear message if it is missing."""

    if not (TOY_BASE / "model_index.json").is_file():
        raise UserError(
            f"the toy base model is missing at {TOY_BASE}; restore it from git or build it with "
            "scripts/pretrain_toy_base.py"
        )
    return TOY_BASE
