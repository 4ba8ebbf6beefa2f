"""Which layers get adapters: the attention set and LoCon's 3x3 convs, on the tiny model and on SD 1.5's shape."""

from collections import Counter

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from trilora.adapters.inject import (
    CONV_BLOCKS,
    adapter_layers,
    add_adapters,
    trainable_parameters,
    unet_conv_targets,
    unet_targets,
)
from trilora.base.tiny import build_tiny_pipeline
from trilora.families.sd1 import CONFIGS as SD15_DIR


@pytest.fixture(scope="module")
def sd15_unet():
    """SD 1.5's UNet with no weights (meta device): its module tree only."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_DIR / "unet"))


def test_sd15_conv_targets_are_kohyas_3x3_convs(sd15_unet):
    conv = unet_conv_targets(sd15_unet)
    attention = unet_targets(sd15_unet)

    assert len(attention) == 192
    assert len(conv) == len(set(conv)) == 50
    assert all(type(sd15_unet.get_submodule(name)) is nn.Conv2d for name in conv)
    assert {sd15_unet.get_submodule(name).kernel_size for name in conv} == {(3, 3)}
    # 22 ResNet blocks (down 4x2, mid 2, up 4x3) with conv1 and conv2, 3 downsamplers, 3 upsamplers
    assert Counter(name.rsplit(".", 1)[1] for name in conv) == {"conv1": 22, "conv2": 22, "conv": 6}
    assert sum(".downsamplers.0.conv" in name for name in conv) == 3
    assert sum(".upsamplers.0.conv" in name for name in conv) == 3
    assert "conv_in" not in conv and "conv_out" not in conv
    assert not set(conv) & set(attention)


def test_what_kohyas_conv_dim_adds_besides(sd15_unet):
    """kohya's LoCon network on SD 1.5 has 278 UNet modules: 192 + 50 + these 36, which it gives the
    attention rank (every Linear and 1x1 conv in the same blocks). trilora's conv targets leave them out."""
    others = [
        f"{block_name}.{name}"
        for block_name, block in sd15_unet.named_modules()
        if type(block).__name__ in CONV_BLOCKS
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))
    ]
    assert Counter(name.rsplit(".", 1)[1] for name in others) == {"time_emb_proj": 22, "conv_shortcut": 14}
    assert 192 + len(unet_conv_targets(sd15_unet)) + len(others) == 278


def test_tiny_conv_targets():
    unet = build_tiny_pipeline(seed=0).unet
    conv = unet_conv_targets(unet)
    # 8 ResNet blocks (down 1+1, mid 2, up 2+2), one downsampler, one upsampler
    assert len(conv) == 18
    assert "down_blocks.0.downsamplers.0.conv" in conv
    assert "up_blocks.0.upsamplers.0.conv" in conv
    assert "mid_block.resnets.1.conv2" in conv
    assert {unet.get_submodule(name).kernel_size for name in conv} == {(3, 3)}


def test_a_second_add_adapters_keeps_the_first_trainable():
    unet = build_tiny_pipeline(seed=0).unet
    attention, conv = unet_targets(unet), unet_conv_targets(unet)
    add_adapters(unet, attention, "lora", 4, 2.0)
    add_adapters(unet, conv, "trilora", 2, 1.0, sigma="identity")

    layers = adapter_layers(unet)
    assert set(layers) == set(attention) | set(conv)
    assert {(layers[name].rank, layers[name].alpha) for name in conv} == {(2, 1.0)}
    assert {(layers[name].rank, layers[name].alpha) for name in attention} == {(4, 2.0)}
    trainable = [p for p in unet.parameters() if p.requires_grad]
    assert len(trainable) == len(trainable_parameters(unet)) == 2 * len(attention) + 3 * len(conv)

    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    unet(latents, 500, encoder_hidden_states=context).sample.square().mean().backward()
    assert all(layers[name].up.weight.grad is not None for name in attention)
    assert all(layers[name].down.weight.grad is not None for name in conv)


def test_a_rank_wider_than_target_layers_is_warned_about(sd15_unet, caplog):
    from trilora.adapters.inject import narrower_than, warn_if_narrow

    targets = unet_targets(sd15_unet)
    assert narrower_than(sd15_unet, targets, 320) == {}  # SD 1.5's narrowest attention layers are 320 wide
    narrow = narrower_than(sd15_unet, targets, 512)
    assert narrow and set(narrow.values()) == {320} and all(".attentions." in n for n in narrow)
    with caplog.at_level("WARNING", logger="trilora"):
        warn_if_narrow(sd15_unet, targets, 512, "--rank")
    assert f"--rank 512 is wider than {len(narrow)} of the {len(targets)} target layers" in caplog.text
