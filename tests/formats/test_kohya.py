"""The kohya file layout: exact key names, the round trip, and the header metadata we write.

That diffusers loads these files into the same outputs as ours is tested in test_diffusers_lora.py.
"""

import json
from importlib.metadata import version

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trilora.adapters.inject import (
    add_adapters,
    lora_pairs,
    text_encoder_targets,
    unet_conv_targets,
    unet_targets,
)
from trilora.base.tiny import build_tiny_pipeline
from trilora.errors import UserError
from trilora.families.registry import FAMILIES
from trilora.families.sd1 import CONFIGS as SD15_DIR
from trilora.formats.kohya import conv_network_args, kohya_name, module_key, read_kohya, save_kohya
from trilora.formats.metadata import kohya_metadata

RANK, ALPHA = 4, 2.0
CONV_RANK, CONV_ALPHA = 2, 1.0


@pytest.fixture(scope="module")
def pairs():
    """Perturbed LoRA pairs of every target of the tiny model, keyed as trilora's export passes them."""
    pipe = build_tiny_pipeline(seed=0)
    add_adapters(pipe.unet, unet_targets(pipe.unet), "lora", RANK, ALPHA)
    add_adapters(pipe.text_encoder, text_encoder_targets(pipe.text_encoder), "trilora", RANK, ALPHA)
    torch.manual_seed(1)
    pairs = {f"unet.{k}": v for k, v in lora_pairs(pipe.unet).items()}
    pairs |= {f"text_encoder.{k}": v for k, v in lora_pairs(pipe.text_encoder).items()}
    return {
        key: (torch.randn_like(down) * 0.1, torch.randn_like(up) * 0.1) for key, (down, up) in pairs.items()
    }


def test_key_names_are_kohyas(pairs, tmp_path):
    tensors = load_file(save_kohya(tmp_path / "a.safetensors", pairs, ALPHA, {}))

    for key in (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
        "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0.alpha",
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
        "lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight",
    ):
        assert key in tensors, key
    assert len(tensors) == 3 * len(pairs)
    alpha = tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]
    assert alpha.shape == () and alpha.item() == ALPHA
    conv = tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    assert conv.shape == (RANK, 32, 1, 1) and conv.dtype == torch.float16


def test_read_kohya_inverts_save_kohya(pairs, tmp_path):
    metadata = {"ss_network_dim": str(RANK), "trilora_method": "trilora"}
    path = save_kohya(tmp_path / "a.safetensors", pairs, ALPHA, metadata, dtype=torch.float32)
    read_pairs, alphas, read_metadata = read_kohya(path)

    assert read_pairs.keys() == pairs.keys()
    for key, (down, up) in pairs.items():
        assert torch.equal(read_pairs[key][0], down) and torch.equal(read_pairs[key][1], up), key
    assert alphas == dict.fromkeys(pairs, ALPHA)
    assert read_metadata == metadata


@pytest.fixture(scope="module")
def locon_pairs():
    """LoCon: attention pairs of rank 4 and 3x3-conv pairs of rank 2, with their alphas."""
    pipe = build_tiny_pipeline(seed=0)
    conv = unet_conv_targets(pipe.unet)
    add_adapters(pipe.unet, unet_targets(pipe.unet), "lora", RANK, ALPHA)
    add_adapters(pipe.unet, conv, "lora", CONV_RANK, CONV_ALPHA)
    torch.manual_seed(2)
    pairs = {f"unet.{k}": (down, torch.randn_like(up)) for k, (down, up) in lora_pairs(pipe.unet).items()}
    alphas = {key: CONV_ALPHA if key.removeprefix("unet.") in conv else ALPHA for key in pairs}
    return pairs, alphas


def test_locon_conv_modules_have_their_own_rank_and_alpha(locon_pairs, tmp_path):
    pairs, alphas = locon_pairs
    tensors = load_file(save_kohya(tmp_path / "a.safetensors", pairs, alphas, {}))

    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{name}.lora_down.weight"].shape == (CONV_RANK, 32, 3, 3)
    assert tensors[f"{name}.lora_up.weight"].shape == (32, CONV_RANK, 1, 1)
    assert tensors[f"{name}.alpha"].item() == CONV_ALPHA
    for name in ("lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv",
                 "lora_unet_mid_block_resnets_1_conv2", "lora_unet_up_blocks_1_resnets_1_conv1"):  # fmt: skip
        assert tensors[f"{name}.alpha"].item() == CONV_ALPHA, name
        assert tensors[f"{name}.lora_down.weight"].shape[2:] == (3, 3), name
    assert tensors["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == ALPHA
    assert len(tensors) == 3 * len(pairs)


def test_read_kohya_inverts_save_kohya_with_alphas_per_module(locon_pairs, tmp_path):
    pairs, alphas = locon_pairs
    path = save_kohya(tmp_path / "a.safetensors", pairs, alphas, {}, dtype=torch.float32)
    read_pairs, read_alphas, _ = read_kohya(path)

    assert read_alphas == alphas
    assert sum(alpha == CONV_ALPHA for alpha in read_alphas.values()) == 18
    for key, (down, up) in pairs.items():
        assert torch.equal(read_pairs[key][0], down) and torch.equal(read_pairs[key][1], up), key


def test_an_alpha_dict_must_name_every_pair(locon_pairs, tmp_path):
    pairs, alphas = locon_pairs
    alphas = {key: alpha for key, alpha in alphas.items() if key != "unet.mid_block.resnets.0.conv1"}
    with pytest.raises(ValueError, match="no alpha for 1 adapter.*mid_block.resnets.0.conv1"):
        save_kohya(tmp_path / "a.safetensors", pairs, alphas, {})


def test_conv_network_args_are_kohyas():
    """sd-scripts writes `--network_args conv_dim=8 conv_alpha=4` as the JSON of its string values."""
    assert conv_network_args(8, 4.0) == {"ss_network_args": '{"conv_dim": "8", "conv_alpha": "4"}'}
    assert json.loads(conv_network_args(4, 0.5)["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "0.5"}


def test_fp16_export_rounds_the_factors(pairs, tmp_path):
    read_pairs, _, _ = read_kohya(save_kohya(tmp_path / "a.safetensors", pairs, ALPHA, {}))
    key = "unet.down_blocks.0.attentions.0.proj_in"
    assert torch.equal(read_pairs[key][0], pairs[key][0].half())


def test_every_sd15_layer_name_survives_the_underscores():
    """kohya names lose the dots; reading them back needs the vocabulary of SD 1.5's module names."""
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_DIR / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_DIR / "text_encoder"))
    keys = [
        f"{part}.{name}"
        for part, model in (("unet", unet), ("text_encoder", text_encoder))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    ]
    assert len(keys) > 300
    for key in keys:
        assert module_key(kohya_name(key)) == key


def test_text_encoder_names_get_text_model_once():
    assert (
        kohya_name("text_encoder.encoder.layers.3.mlp.fc1") == "lora_te_text_model_encoder_layers_3_mlp_fc1"
    )
    # a transformers-4 CLIPTextModel path already has it
    assert (
        kohya_name("text_encoder.text_model.encoder.layers.3.mlp.fc1")
        == "lora_te_text_model_encoder_layers_3_mlp_fc1"
    )
    with pytest.raises(ValueError, match="vae"):
        kohya_name("vae.decoder.conv_in")


def test_a_module_without_alpha_gets_alpha_equal_to_rank(tmp_path):
    path = tmp_path / "other_trainer.safetensors"
    name = "lora_unet_mid_block_attentions_0_proj_in"
    save_file(
        {f"{name}.lora_down.weight": torch.ones(8, 32), f"{name}.lora_up.weight": torch.ones(32, 8)}, path
    )
    pairs, alphas, metadata = read_kohya(path)
    assert alphas == {"unet.mid_block.attentions.0.proj_in": 8.0}
    assert metadata == {}


def test_files_that_are_not_kohya_loras_are_user_errors(tmp_path):
    diffusers_style = tmp_path / "diffusers.safetensors"
    save_file({"unet.proj_in.lora_A.weight": torch.ones(4, 8)}, diffusers_style)
    with pytest.raises(UserError, match="diffusers.safetensors is not a kohya LoRA"):
        read_kohya(diffusers_style)

    lycoris = tmp_path / "loha.safetensors"
    save_file({"lora_unet_proj_in.hada_w1_a": torch.ones(4, 8)}, lycoris)
    with pytest.raises(UserError, match="loha.safetensors: lora_unet_proj_in has no lora_down"):
        read_kohya(lycoris)

    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    with pytest.raises(UserError, match="notes.safetensors"):
        read_kohya(text)


def test_kohya_metadata():
    config = {"adapter": {"method": "trilora", "rank": 4}, "data": {"resolution": 512}}
    info = {
        "method": "trilora",
        "rank": 4,
        "alpha": 2,
        "sigma_init": "svd",
        "best_step": 150,
        "best_val_loss": 0.1234,
        "name": "my-style",
        "steps": 300,
        "base_model": "sd15",
        "config": config,
    }
    metadata = kohya_metadata(info, FAMILIES["sd1"].header("epsilon"))

    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4"
    assert metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_output_name"] == metadata["modelspec.title"] == "my-style"
    assert metadata["ss_steps"] == "300"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.implementation"] == "diffusers"
    assert metadata["modelspec.resolution"] == "512x512"
    assert metadata["modelspec.date"][:2] == "20"  # ISO 8601
    assert metadata["trilora_method"] == "trilora"
    assert metadata["trilora_sigma_init"] == "svd"
    assert metadata["trilora_best_step"] == "150"
    assert metadata["trilora_best_val_loss"] == "0.1234"
    assert metadata["trilora_version"] == version("trilora")
    assert json.loads(metadata["trilora_config"]) == config


def test_kohya_metadata_leaves_out_what_is_not_known():
    metadata = kohya_metadata(
        {"method": "lora", "rank": 8, "alpha": 8.0, "sigma_init": "", "best_val_loss": None},
        FAMILIES["sd1"].header("epsilon"),
    )
    assert "trilora_sigma_init" not in metadata
    assert "trilora_best_val_loss" not in metadata
    assert "ss_training_started_at" not in metadata
    assert metadata["trilora_config"] == "{}"
    assert metadata["modelspec.title"].startswith("lora@")
