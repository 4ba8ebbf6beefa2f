"""Stable Diffusion 2.x (2.0, 2.1, 512 ε and 768 v prediction, and their fine-tunes): OpenCLIP
ViT-H/14 text encoder with 23 of its 24 blocks (1024 wide; its tokenizer pads with "!", id 0), a UNet
with linear projections and attention computed in fp32 (`upcast_attention`, which SD 2.1 needs
against fp16 overflow). Single files hold the text encoder under `cond_stage_model.model.` in
OpenCLIP's names; configs shipped in sd21/ are SD 2.1 768-v's. Whether a file predicts ε or v is not
in it (SD 2.1 512 and 768 have the same tensors), so a single file needs --prediction-type unless it
carries a `v_pred` marker or --base-config says it."""

from pathlib import Path

from trilora.families.sd import sd_family, sd_folder, version_header
from trilora.formats.ldm import OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, ldm_state_dict, open_clip_to_ldm

CONFIGS = Path(__file__).parent / "sd21"
TINY_UNET = dict(use_linear_projection=True, upcast_attention=True, attention_head_dim=(2, 4))
TINY_TEXT = dict(hidden_act="gelu", pad_token_id=0)


def is_file(shapes: dict[str, tuple]) -> bool:
    return OPEN_CLIP_PREFIX + "token_embedding.weight" in shapes


def header(prediction_type: str) -> dict[str, str]:
    architecture = (
        "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    )
    return version_header("sd_v2", True, architecture + "/lora", prediction_type, always=True)


def tiny_pipeline(seed: int):
    from trilora.families.tiny import tiny_sd_pipeline  # diffusers (~3 s), which no loaded model needs

    return tiny_sd_pipeline(seed, CONFIGS, TINY_UNET, TINY_TEXT)


FAMILY = sd_family(
    name="sd2",
    title="Stable Diffusion 2.x",
    configs=CONFIGS,
    default_resolution=lambda prediction_type: 768 if prediction_type == "v_prediction" else 512,
    is_folder=lambda index, text: sd_folder(index) and text.get("hidden_act") == "gelu",
    is_file=is_file,
    file_parts=(("UNet", UNET_PREFIX), ("VAE", VAE_PREFIX), ("OpenCLIP text encoder", OPEN_CLIP_PREFIX)),
    ldm_state_dict=lambda unet, vae, text_encoder: ldm_state_dict(unet, vae, text_encoder, open_clip_to_ldm),
    header=header,
    tiny=tiny_pipeline,
    prediction_known=False,
    base_versions=("sd_v2", "sd_v2_v"),
)
