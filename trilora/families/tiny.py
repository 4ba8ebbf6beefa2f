"""Tiny random-weight pipelines of the SD-shaped families, built from a family's shipped configs
(tokenizer and scheduler) for tests, benchmarks and the demo. Apart from the family modules because
it imports diffusers and transformers (4-5 s), which `inspect` and the config tree never need."""

from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
)
TINY_VAE = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    scaling_factor=0.5,
)
CLIP_TEXT = dict(  # what every CLIP text encoder here shares with SD 1.5's: vocabulary, length, tokens
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
TINY_TEXT = CLIP_TEXT | dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
# SDXL's shape in small: three levels, the first without attention, two layers per block as in SDXL
# (so the original layout's block numbers are SDXL's), linear projections, the size embedding.
TINY_SDXL_UNET = TINY_UNET | dict(
    block_out_channels=(32, 32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True,
    cross_attention_dim=32 + 48,  # the two encoders' widths side by side
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 40,  # six size embeddings and the pooled vector
)
# Wider than the first, as bigG is than CLIP-L: diffusers tells a single file's encoders apart by width.
TINY_SDXL_TEXT_2 = TINY_TEXT | dict(hidden_act="gelu", pad_token_id=0, hidden_size=48, intermediate_size=96,
                                    projection_dim=40)  # fmt: skip


def tiny_sd_pipeline(seed: int, configs: Path, unet: dict | None = None, text: dict | None = None):
    """A random-weight SD-shaped pipeline, identical for identical seeds: the tiny UNet, VAE and text
    encoder (changed by `unet` and `text`), with the tokenizer and scheduler shipped in `configs`."""
    torch.manual_seed(seed)
    return sd_pipeline(
        UNet2DConditionModel(**TINY_UNET | (unet or {})),
        AutoencoderKL(**TINY_VAE),
        CLIPTextModel(CLIPTextConfig(**TINY_TEXT | (text or {}))),
        configs,
    )


def tiny_sdxl_pipeline(seed: int, configs: Path) -> StableDiffusionXLPipeline:
    """A random-weight SDXL-shaped pipeline, identical for identical seeds, with the tokenizers and
    scheduler shipped in `configs`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET)
    vae = AutoencoderKL(**TINY_VAE | dict(force_upcast=True))
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_2))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(configs / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler_of(configs),
    )


def scheduler_of(configs: Path):
    """The scheduler shipped in `configs`, of the class its model_index.json names."""
    scheduler_class = getattr(diffusers, diffusers.DiffusionPipeline.load_config(configs)["scheduler"][1])
    return scheduler_class.from_pretrained(configs / "scheduler")


def sd_pipeline(unet, vae, text_encoder, configs: Path) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline around these models with the tokenizer and scheduler in `configs`."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"),
        unet=unet,
        scheduler=scheduler_of(configs),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
