"""SDXL's original (SGM) layout, groundwork for the SDXL family: on its full-size UNet (meta device)
every weight's single-file name maps back through diffusers' own converter, and kohya's SGM LoRA
names (`lora_unet_input_blocks_4_1_…`) of kohya's 722 default targets map back through diffusers'
SDXL LoRA conversion to the modules they were made from; a tiny second text encoder (OpenCLIP
names, projection included) reads back whole."""

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.lora_conversion_utils import (
    _convert_non_diffusers_lora_to_diffusers,
    _maybe_map_sgm_blocks_to_diffusers,
)
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint
from diffusers.utils import convert_unet_state_dict_to_peft
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from trilora.adapters.inject import unet_conv_targets, unet_targets
from trilora.families.tiny import TINY_TEXT
from trilora.formats.ldm import UNET_PREFIX, open_clip_to_ldm, unet_ldm_module, unet_to_ldm

# stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the values that differ from the defaults)
SDXL_UNET = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], layers_per_block=2,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)  # fmt: skip


def sdxl_unet():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET)


def test_every_sdxl_unet_weight_has_an_original_name_diffusers_reads_back():
    unet = sdxl_unet()
    state = unet.state_dict()
    ldm = unet_to_ldm(state, unet.config)
    assert "model.diffusion_model.label_emb.0.0.weight" in ldm  # the pooled-text and size embedding
    back = convert_ldm_unet_checkpoint(ldm, unet.config)
    assert set(back) == set(state) and all(back[k].shape == state[k].shape for k in state)
    assert len({k.removeprefix(UNET_PREFIX) for k in ldm}) == len(state) == 1680


def test_kohya_sgm_lora_names_of_the_default_targets_map_back_through_diffusers():
    unet = sdxl_unet()
    targets = unet_targets(unet)
    assert len(targets) == 722 and len(unet_conv_targets(unet)) == 38  # kohya's 722; the 3x3 convs of LoCon
    names = {f"lora_unet_{unet_ldm_module(path, unet.config).replace('.', '_')}": path
             for path in targets + unet_conv_targets(unet)}  # fmt: skip
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert all("down_blocks" not in name and "up_blocks" not in name for name in names)
    state = {}
    for name in names:
        state |= {f"{name}.lora_down.weight": torch.zeros(1), f"{name}.lora_up.weight": torch.zeros(1),
                  f"{name}.alpha": torch.tensor(1.0)}  # fmt: skip
    # what diffusers' loader does with a kohya SDXL file: lora_state_dict's conversion, then PEFT's names
    converted, _ = _convert_non_diffusers_lora_to_diffusers(
        _maybe_map_sgm_blocks_to_diffusers(state, unet.config)
    )
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    back = {key.removesuffix(".lora_A.weight") for key in peft if key.endswith(".lora_A.weight")}
    assert back == set(names.values())


def test_sdxl_second_text_encoder_in_openclip_names_reads_back_with_its_projection():
    """OpenCLIP bigG under `conditioner.embedders.1.model.`: q/k/v fused, the projection stored as
    x·P (the transpose of transformers' Linear weight); diffusers' converter gives back every weight."""
    torch.manual_seed(0)
    config = CLIPTextConfig(**TINY_TEXT | {"hidden_act": "gelu", "projection_dim": 24})
    model = CLIPTextModelWithProjection(config)
    ldm = open_clip_to_ldm(model.state_dict(), "conditioner.embedders.1.model.")
    assert ldm["conditioner.embedders.1.model.text_projection"].shape == (32, 24)  # hidden x projection
    back = convert_open_clip_checkpoint(model, ldm, prefix="conditioner.embedders.1.model.")
    state = model.state_dict()
    assert {k.removeprefix("text_model.") for k in back} == {k.removeprefix("text_model.") for k in state}
    ours = {k.removeprefix("text_model."): v for k, v in state.items()}
    assert all(torch.equal(ours[k.removeprefix("text_model.")], v) for k, v in back.items())
