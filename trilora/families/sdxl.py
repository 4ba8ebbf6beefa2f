"""Stable Diffusion XL (base 1.0 and its fine-tunes: Pony, Illustrious, NoobAI, and v-prediction
derivatives): two text encoders, CLIP ViT-L (768 wide) and OpenCLIP ViT-bigG (1280 wide, its
tokenizer pads with "!", id 0), a UNet that adds a pooled-text and image-size embedding to the time
embedding (`addition_embed_type="text_time"`), 1024 px. Single files are in the SGM layout: UNet
under `model.diffusion_model.`, CLIP-L under `conditioner.embedders.0.transformer.`, bigG under
`conditioner.embedders.1.model.`; configs shipped in sdxl/ are SDXL base 1.0's (ε prediction); a
v-prediction derivative is recognised by its `v_pred` marker, else --prediction-type says it.

Conditioning, as SDXL was trained and diffusers' StableDiffusionXLPipeline draws: each encoder's
penultimate hidden state (`hidden_states[-2]`), concatenated (77 x 2048), and the pooled vector of
bigG's projection (1280). Both travel as one tensor, (N, 78, 2048): the 77 token states, then a row
holding the pooled vector in its first 1280 entries; so caching, batching and validation handle
SDXL's conditioning as they handle SD's. The size conditioning (`time_ids`: original height and width,
crop top and left, target height and width) is per image, from how it was resized and cropped
(trilora/data/folder.py), and reaches `denoise` as `sizes`.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from trilora.families.family import Family
from trilora.formats.ldm import (
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    sdxl_state_dict,
)

CONFIGS = Path(__file__).parent / "sdxl"
BASE_VERSION = "sdxl_base_v1-0"  # kohya's for every SDXL model (sd-scripts' sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0)


def is_file(shapes: dict[str, tuple]) -> bool:
    return SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight" in shapes and any(
        name.startswith(SDXL_CLIP_PREFIX) for name in shapes
    )


def header(prediction_type: str) -> dict[str, str]:
    """kohya's `ss_base_model_version` (A1111 lists an SDXL LoRA for SDXL models only with it) and
    sai_model_spec's ARCH_SD_XL_V1_BASE with its implementation for SDXL LoRAs; v prediction is said
    by modelspec.prediction_type alone, kohya's version string having no v form for SDXL."""
    return {
        "ss_base_model_version": BASE_VERSION,
        "ss_v2": "False",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
    }


def tokenize(pipe, captions: list[str]) -> torch.Tensor:
    """Both tokenizers' ids, padded to 77: (N, 2, 77)."""
    ids = [
        tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        for tokenizer in (pipe.tokenizer, pipe.tokenizer_2)
    ]  # fmt: skip
    return torch.stack(ids, dim=1)


def encode(pipe, input_ids: torch.Tensor) -> torch.Tensor:
    """(N, 2, 77) ids -> (N, 78, 2048): both encoders' penultimate states side by side, then the pooled row."""
    first = pipe.text_encoder(input_ids[:, 0].to(pipe.text_encoder.device), output_hidden_states=True)
    second = pipe.text_encoder_2(input_ids[:, 1].to(pipe.text_encoder_2.device), output_hidden_states=True)
    states = first.hidden_states[-2]
    states = torch.cat([states, second.hidden_states[-2].to(states.device, states.dtype)], dim=-1)
    pooled = second.text_embeds.to(states.device, states.dtype)
    pooled = F.pad(pooled, (0, states.shape[-1] - pooled.shape[-1]))
    return torch.cat([states, pooled[:, None]], dim=1)


def pooled_width(unet) -> int:
    """The pooled vector's width: what the added embedding takes beyond the six size embeddings."""
    config = unet.config
    return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim


def denoise(unet, noisy, timesteps, condition, sizes):
    """The UNet's prediction; `sizes` (B, 6) is each image's time_ids, embedded in fp32."""
    added = {
        "text_embeds": condition[:, -1, : pooled_width(unet)],
        "time_ids": sizes.to(noisy.device, torch.float32),
    }
    return unet(noisy, timesteps, condition[:, :-1], added_cond_kwargs=added).sample


def tiny_pipeline(seed: int):
    from trilora.families.tiny import tiny_sdxl_pipeline  # diffusers (~3 s), which no loaded model needs

    return tiny_sdxl_pipeline(seed, CONFIGS)


FAMILY = Family(
    name="sdxl",
    title="Stable Diffusion XL",
    pipeline="StableDiffusionXLPipeline",
    configs=CONFIGS,
    parts=("unet", "text_encoder", "text_encoder_2"),
    default_resolution=lambda prediction_type: 1024,
    is_folder=lambda index, text: index.get("_class_name") == "StableDiffusionXLPipeline",
    is_file=is_file,
    file_parts=(
        ("UNet", UNET_PREFIX),
        ("VAE", VAE_PREFIX),
        ("CLIP ViT-L text encoder", SDXL_CLIP_PREFIX),
        ("OpenCLIP ViT-bigG text encoder", SDXL_OPEN_CLIP_PREFIX),
    ),
    ldm_state_dict=sdxl_state_dict,
    header=header,
    tiny=tiny_pipeline,
    tokenize=tokenize,
    encode=encode,
    denoise=denoise,
    prediction_known=True,
    base_versions=(BASE_VERSION,),
    bucket_step=32,
    token_shape=(2, 77),
    kohya_sgm=True,
)
