"""A tiny SD-1.x-shaped pipeline with random weights, for tests, benchmarks and the first demo.

Same classes and wiring as Stable Diffusion 1.5 (AutoencoderKL, CLIPTextModel with the real CLIP
tokenizer, UNet2DConditionModel with cross-attention, the SD noise schedule), only narrower and
shallower, so that it builds in a second and trains on a CPU.
"""

import random
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image, ImageDraw
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trilora.files import save_image, write_text

SD15_DIR = Path(__file__).parent / "sd15"

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
TINY_RESOLUTION = 32  # pixels; the VAE downsamples by 4 to 8x8 latents


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD-shaped pipeline, identical for identical seeds."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    return sd_pipeline(unet, vae, text_encoder)


def sd_pipeline(unet, vae, text_encoder) -> StableDiffusionPipeline:
    """An SD 1.x pipeline around these models, with the real CLIP tokenizer and SD 1.5's scheduler."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer"),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(SD15_DIR / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline as a diffusers folder (model_index.json and one folder per part)."""
    path = Path(path)
    build_tiny_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path


SHAPE_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
}
SHAPES = ("circle", "square")


def make_shapes_dataset(folder: Path, count: int = 24, size: int = TINY_RESOLUTION, seed: int = 0) -> Path:
    """`count` images of one coloured shape on a light background, each with a caption .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        colour, shape = rng.choice(sorted(SHAPE_COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size * 4, size * 4), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        radius = rng.randint(size, size * 3 // 2)
        cx, cy = rng.randint(radius, size * 4 - radius), rng.randint(radius, size * 4 - radius)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=SHAPE_COLOURS[colour])
        save_image(image.resize((size, size), Image.Resampling.BOX), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", f"a {colour} {shape}")
    return folder
