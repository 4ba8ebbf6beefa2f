"""Our exported files, loaded by diffusers' own `load_lora_weights`, give the outputs of our adapters.

This is the test that the exports are right: the same tiny model (same seed) with our AdapterLayers
and with diffusers/PEFT's LoRA layers built from the file must compute the same text-encoder hidden
states, the same UNet noise prediction and the same images. Alpha differs from the rank so that a
lost alpha shows.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trilora.adapters.inject import (
    adapter_layers,
    add_adapters,
    lora_pairs,
    set_multiplier,
    text_encoder_targets,
    unet_targets,
)
from trilora.base.tiny import build_tiny_pipeline
from trilora.formats.diffusers_lora import save_diffusers
from trilora.formats.kohya import save_kohya

RANK, ALPHA = 4, 2.0  # alpha != rank: a loader that drops alpha uses scale 1 instead of 0.5
PROMPT = "a photo of a cat"


def perturb(model: torch.nn.Module) -> None:
    """Random factors, as after training: LoRA starts with up = 0 and TriLoRA with down = 0."""
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.down.weight.normal_(std=0.1)
            layer.up.weight.normal_(std=0.1)
            if layer.mid is not None:
                layer.mid.normal_(std=0.5)  # a full matrix, so that folding it into up matters


@pytest.fixture(scope="module")
def trained():
    """The tiny pipeline with perturbed adapters on the UNet and the text encoder, every other one TriLoRA."""
    pipe = build_tiny_pipeline(seed=0)
    torch.manual_seed(1)
    for model, targets in (
        (pipe.unet, unet_targets(pipe.unet)),
        (pipe.text_encoder, text_encoder_targets(pipe.text_encoder)),
    ):
        add_adapters(model, targets[0::2], "lora", RANK, ALPHA)
        add_adapters(model, targets[1::2], "trilora", RANK, ALPHA)
        perturb(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_pairs(pipe, text_encoder: bool = True) -> dict:
    pairs = {f"unet.{k}": v for k, v in lora_pairs(pipe.unet).items()}
    if text_encoder:
        pairs |= {f"text_encoder.{k}": v for k, v in lora_pairs(pipe.text_encoder).items()}
    return pairs


@pytest.fixture(scope="module")
def inputs(trained):
    generator = torch.Generator().manual_seed(2)
    ids = trained.tokenizer(
        PROMPT, padding="max_length", max_length=trained.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)  # fixed encoder states: the UNet on its own
    return ids, latents, context


@torch.no_grad()
def forward(pipe, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(text-encoder hidden states (1, 77, 32), UNet noise prediction (1, 4, 8, 8))."""
    ids, latents, context = inputs
    hidden = pipe.text_encoder(ids)[0]
    eps = pipe.unet(latents, 500, encoder_hidden_states=context).sample
    return hidden, eps


def base_pipeline():
    """A fresh copy of the base model the adapters were trained on."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def loaded_pipeline(source):
    pipe = base_pipeline()
    pipe.load_lora_weights(str(source))
    return pipe


@pytest.fixture(scope="module")
def base():
    return base_pipeline()


def save(kind: str, pairs: dict, folder, dtype):
    if kind == "kohya":
        return save_kohya(folder / "adapter.safetensors", pairs, ALPHA, {}, dtype)
    return save_diffusers(folder / "adapter", pairs, RANK, ALPHA, dtype)


def test_the_adapters_cover_linear_and_conv_layers(trained):
    pairs = export_pairs(trained)
    assert any(down.ndim == 4 for down, _ in pairs.values())  # proj_in/proj_out are 1x1 convs here
    assert any(down.ndim == 2 for down, _ in pairs.values())


@pytest.mark.parametrize("kind", ["kohya", "diffusers"])
def test_diffusers_loads_our_adapters_exactly(kind, trained, base, inputs, tmp_path):
    ours = forward(trained, inputs)
    source = save(kind, export_pairs(trained), tmp_path, torch.float32)
    pipe = loaded_pipeline(source)
    theirs = forward(pipe, inputs)

    for name, mine, loaded, plain in zip(
        ("text encoder", "unet"), ours, theirs, forward(base, inputs), strict=True
    ):
        assert (mine - plain).abs().max() > 1e-2, f"the {name} adapters change nothing: the test cannot fail"
        torch.testing.assert_close(loaded, mine, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", ["kohya", "diffusers"])
def test_fp16_export_matches_within_fp16_rounding(kind, trained, inputs, tmp_path):
    ours = forward(trained, inputs)
    theirs = forward(loaded_pipeline(save(kind, export_pairs(trained), tmp_path, torch.float16)), inputs)
    for mine, loaded in zip(ours, theirs, strict=True):
        torch.testing.assert_close(loaded, mine, atol=1e-3, rtol=1e-3)


def test_generated_images_match(trained, base, tmp_path):
    def images(pipe):
        generator = torch.Generator().manual_seed(0)
        kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="np")
        return pipe(PROMPT, generator=generator, **kwargs).images

    ours = images(trained)
    theirs = images(
        loaded_pipeline(
            save_diffusers(tmp_path / "adapter", export_pairs(trained), RANK, ALPHA, torch.float32)
        )
    )
    plain = images(base)
    assert abs(ours - plain).max() > 1e-3
    assert abs(theirs - ours).max() < 1e-4


def test_unet_only_file_leaves_the_text_encoder_alone(trained, base, inputs, tmp_path):
    folder = save_diffusers(
        tmp_path / "adapter", export_pairs(trained, text_encoder=False), RANK, ALPHA, torch.float32
    )
    header = json.loads(
        safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt").metadata()["lora_adapter_metadata"]
    )
    assert not any(key.startswith("text_encoder.") for key in header)

    hidden, eps = forward(loaded_pipeline(folder), inputs)
    base_hidden, _ = forward(base, inputs)
    torch.testing.assert_close(hidden, base_hidden, atol=0, rtol=0)
    torch.testing.assert_close(eps, forward(trained, inputs)[1], atol=1e-5, rtol=1e-5)


def test_key_layout_and_adapter_metadata(trained, tmp_path):
    folder = save_diffusers(
        tmp_path / "adapter", export_pairs(trained), RANK, ALPHA, metadata={"trilora_method": "lora"}
    )
    file = folder / "pytorch_lora_weights.safetensors"
    tensors = load_file(file)
    with safe_open(str(file), "pt") as f:
        header = f.metadata()

    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in tensors
    assert "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight" in tensors
    assert "unet.up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj.lora_A.weight" in tensors
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_B.weight" in tensors
    assert len(tensors) == 2 * len(export_pairs(trained))
    assert {t.dtype for t in tensors.values()} == {torch.float16}

    assert header["format"] == "pt"
    assert header["trilora_method"] == "lora"
    adapter = json.loads(header["lora_adapter_metadata"])
    assert adapter["unet.r"] == adapter["text_encoder.r"] == RANK
    assert adapter["unet.lora_alpha"] == adapter["text_encoder.lora_alpha"] == ALPHA
    assert "encoder.layers.0.self_attn.q_proj" in adapter["text_encoder.target_modules"]
    assert len(adapter["unet.target_modules"]) == len(lora_pairs(trained.unet))


def test_without_adapter_metadata_diffusers_takes_alpha_equal_to_rank(trained, inputs, tmp_path):
    """The quirk the metadata is there for: the file alone carries no alpha, so diffusers uses scale 1."""
    folder = save_diffusers(tmp_path / "adapter", export_pairs(trained), RANK, ALPHA, torch.float32)
    file = folder / "pytorch_lora_weights.safetensors"
    save_file(load_file(file), str(file), metadata={"format": "pt"})

    loaded = forward(loaded_pipeline(folder), inputs)
    set_multiplier(trained.unet, RANK / ALPHA)
    set_multiplier(trained.text_encoder, RANK / ALPHA)
    try:
        scale_one = forward(trained, inputs)
    finally:
        set_multiplier(trained.unet, 1.0)
        set_multiplier(trained.text_encoder, 1.0)
    for mine, theirs in zip(scale_one, loaded, strict=True):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)


def test_a_pair_of_another_rank_is_refused(tmp_path):
    pairs = {"unet.proj_in": (torch.zeros(8, 16), torch.zeros(16, 8))}
    with pytest.raises(ValueError, match="rank 8, expected 4"):
        save_diffusers(tmp_path / "adapter", pairs, 4, 4.0)
