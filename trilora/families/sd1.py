"""Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes): CLIP ViT-L/14 text encoder (last hidden
state, 768 wide), ε prediction, 512 px. Single files hold the text encoder under
`cond_stage_model.transformer.`; configs shipped in sd15/ are SD 1.5's."""

from pathlib import Path

from trilora.families.sd import sd_family, sd_folder, version_header
from trilora.formats.ldm import TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX, ldm_state_dict

CONFIGS = Path(__file__).parent / "sd15"


def is_file(shapes: dict[str, tuple]) -> bool:
    return any(name.startswith(TEXT_ENCODER_PREFIX) for name in shapes)


def header(prediction_type: str) -> dict[str, str]:
    # sd-scripts' model_util.get_model_version_str_for_sd1_sd2 and sai_model_spec's ARCH_SD_V1
    return version_header("sd_v1", False, "stable-diffusion-v1/lora", prediction_type, always=False)


def tiny_pipeline(seed: int):
    from trilora.families.tiny import tiny_sd_pipeline  # diffusers (~3 s), which no loaded model needs

    return tiny_sd_pipeline(seed, CONFIGS)


FAMILY = sd_family(
    name="sd1",
    title="Stable Diffusion 1.x",
    configs=CONFIGS,
    default_resolution=lambda prediction_type: 512,
    is_folder=lambda index, text: sd_folder(index) and text.get("hidden_act") == "quick_gelu",
    is_file=is_file,
    file_parts=(("UNet", UNET_PREFIX), ("VAE", VAE_PREFIX), ("CLIP text encoder", TEXT_ENCODER_PREFIX)),
    ldm_state_dict=ldm_state_dict,
    header=header,
    tiny=tiny_pipeline,
    prediction_known=True,
    base_versions=("sd_v1",),
)
