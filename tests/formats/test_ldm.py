"""The LDM single-file layout: our diffusers -> LDM names must be what diffusers' own loader reads back."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from trilora.base.tiny import build_tiny_pipeline
from trilora.families.sd1 import CONFIGS as SD15_DIR
from trilora.families.tiny import TINY_UNET
from trilora.formats.ldm import (
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ldm_state_dict,
    rename,
    save_single_file,
    unet_module_map,
)


def sd15_on_meta():
    """SD 1.5's three models at full size, with shapes but no memory."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_DIR / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_DIR / "text_encoder"))
    return unet, vae, text_encoder


@pytest.fixture(scope="module")
def sd15_ldm():
    return ldm_state_dict(*sd15_on_meta())


def diffusers_reads_back(ldm, unet, vae, text_encoder):
    """What diffusers' single-file converters make of an LDM state dict, per model."""
    text = convert_ldm_clip_checkpoint(ldm)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 has no `text_model.` level
        text = {key.removeprefix("text_model."): tensor for key, tensor in text.items()}
    return {
        "unet": convert_ldm_unet_checkpoint(ldm, unet.config),
        "vae": convert_ldm_vae_checkpoint(ldm, vae.config),
        "text_encoder": text,
    }


def test_tiny_model_maps_to_ldm_and_back_through_diffusers_converters():
    pipe = build_tiny_pipeline(seed=0)
    models = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    back = diffusers_reads_back(ldm_state_dict(*models.values()), *models.values())
    for name, model in models.items():
        original = model.state_dict()
        assert back[name].keys() == original.keys(), name
        for key, tensor in original.items():
            assert torch.equal(back[name][key], tensor), key


def test_full_size_sd15_maps_to_every_weight_diffusers_needs():
    unet, vae, text_encoder = sd15_on_meta()
    ldm = ldm_state_dict(unet, vae, text_encoder)
    assert len(ldm) == 686 + 248 + 196
    assert infer_diffusers_model_type(ldm) == "v1"
    back = diffusers_reads_back(ldm, unet, vae, text_encoder)
    for name, model in {"unet": unet, "vae": vae, "text_encoder": text_encoder}.items():
        original = model.state_dict()
        assert back[name].keys() == original.keys(), name
        for key, tensor in original.items():
            assert back[name][key].shape == tensor.shape, key


@pytest.mark.parametrize(
    "key, shape",
    [  # names and shapes as in the released v1-5-pruned-emaonly checkpoint
        ("model.diffusion_model.time_embed.0.weight", (1280, 320)),
        ("model.diffusion_model.input_blocks.1.1.proj_in.weight", (320, 320, 1, 1)),
        ("model.diffusion_model.input_blocks.3.0.op.weight", (320, 320, 3, 3)),
        ("model.diffusion_model.input_blocks.9.0.op.weight", (1280, 1280, 3, 3)),
        ("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", (1280, 768)),
        ("model.diffusion_model.output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
        ("model.diffusion_model.output_blocks.5.2.conv.weight", (1280, 1280, 3, 3)),
        ("model.diffusion_model.output_blocks.11.0.skip_connection.weight", (320, 640, 1, 1)),
        ("model.diffusion_model.out.2.weight", (4, 320, 3, 3)),
        ("first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", (256, 128, 1, 1)),
        ("first_stage_model.encoder.mid.attn_1.q.weight", (512, 512, 1, 1)),
        ("first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", (128, 256, 1, 1)),
        ("first_stage_model.decoder.up.3.upsample.conv.weight", (512, 512, 3, 3)),
        ("first_stage_model.decoder.norm_out.weight", (128,)),
        ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", (49408, 768)),
        ("cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight", (768, 3072)),
    ],
)
def test_full_size_sd15_uses_the_released_names(sd15_ldm, key, shape):
    assert tuple(sd15_ldm[key].shape) == shape


def test_save_single_file_writes_ldm_layout(tmp_path):
    pipe = build_tiny_pipeline(seed=0)
    path = save_single_file(pipe, tmp_path / "tiny.safetensors")
    expected = ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder)
    with safe_open(path, framework="pt") as file:
        assert set(file.keys()) == set(expected)
        assert all(key.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_ENCODER_PREFIX)) for key in file.keys())
        for key in file.keys():
            assert torch.equal(file.get_tensor(key), expected[key]), key
        assert file.get_slice("first_stage_model.decoder.mid.attn_1.proj_out.weight").get_shape() == [
            32,
            32,
            1,
            1,
        ]


@pytest.mark.parametrize(
    "key, ldm_key",
    [  # the tiny UNet: 2 levels, 1 layer per block, attention on the high-resolution level
        ("conv_in.weight", "input_blocks.0.0.weight"),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight",
            "input_blocks.1.1.transformer_blocks.0.norm1.weight",
        ),
        ("down_blocks.0.downsamplers.0.conv.weight", "input_blocks.2.0.op.weight"),
        ("down_blocks.1.resnets.0.norm1.bias", "input_blocks.3.0.in_layers.0.bias"),
        ("mid_block.resnets.1.time_emb_proj.weight", "middle_block.2.emb_layers.1.weight"),
        ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.1.1.conv.weight"),
        ("up_blocks.1.resnets.1.conv_shortcut.weight", "output_blocks.3.0.skip_connection.weight"),
        ("up_blocks.1.attentions.1.proj_out.bias", "output_blocks.3.1.proj_out.bias"),
    ],
)
def test_rename_unet_keys(key, ldm_key):
    assert rename(key, unet_module_map(TINY_UNET)) == ldm_key


def test_rename_refuses_modules_sd_1x_does_not_have():
    modules = unet_module_map(TINY_UNET)
    with pytest.raises(ValueError, match="class_embedding"):
        rename("class_embedding.linear_1.weight", modules)
