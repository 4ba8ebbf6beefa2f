"""Our exported files, loaded by diffusers' own `load_lora_weights`, give the outputs of our adapters.

This is the test that the exports are right: the same tiny model (same seed) with our AdapterLayers
and with diffusers/PEFT's LoRA layers built from the file must compute the same text-encoder hidden
states, the same UNet noise prediction and the same images. Alpha differs from the rank so that a
lost alpha shows. LoCon's 3x3-conv adapters have another rank and alpha than the attention ones, so
that a file where either is lost or taken from the other shows too.
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
    unet_conv_targets,
    unet_targets,
)
from trilora.base.detect import Base
from trilora.base.tiny import build_tiny_pipeline
from trilora.config import from_dict
from trilora.families.registry import FAMILIES
from trilora.formats.diffusers_lora import save_diffusers
from trilora.formats.inspect import describe
from trilora.formats.kohya import save_kohya
from trilora.training.export import export_adapters

RANK, ALPHA = 4, 2.0  # alpha != rank: a loader that drops alpha uses scale 1 instead of 0.5
CONV_RANK, CONV_ALPHA = 2, 1.0  # LoCon: another rank and another alpha
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


@pytest.fixture(scope="module")
def locon():
    """The tiny pipeline with perturbed LoCon adapters on the UNet: attention (rank 4, alpha 2) and
    3x3 convs (rank 2, alpha 1), every other one TriLoRA."""
    pipe = build_tiny_pipeline(seed=0)
    torch.manual_seed(3)
    for targets, rank, alpha in (
        (unet_targets(pipe.unet), RANK, ALPHA),
        (unet_conv_targets(pipe.unet), CONV_RANK, CONV_ALPHA),
    ):
        add_adapters(pipe.unet, targets[0::2], "lora", rank, alpha)
        add_adapters(pipe.unet, targets[1::2], "trilora", rank, alpha)
    perturb(pipe.unet)
    return pipe


def locon_alphas(pipe) -> dict[str, float]:
    conv = set(unet_conv_targets(build_tiny_pipeline(seed=0).unet))
    return {f"unet.{name}": CONV_ALPHA if name in conv else ALPHA for name in adapter_layers(pipe.unet)}


def set_conv_multiplier(pipe, multiplier: float) -> None:
    for layer in adapter_layers(pipe.unet).values():
        if layer.rank == CONV_RANK:
            layer.multiplier = multiplier


def save_locon(kind: str, pipe, folder):
    pairs, alphas = export_pairs(pipe, text_encoder=False), locon_alphas(pipe)
    if kind == "kohya":
        return save_kohya(folder / "adapter.safetensors", pairs, alphas, {}, torch.float32)
    return save_diffusers(folder / "adapter", pairs, None, alphas, torch.float32)


@pytest.mark.parametrize("kind", ["kohya", "diffusers"])
def test_diffusers_loads_locon_exactly(kind, locon, base, inputs, tmp_path):
    _, ours = forward(locon, inputs)
    set_conv_multiplier(locon, 0.0)
    try:
        _, attention_only = forward(locon, inputs)
    finally:
        set_conv_multiplier(locon, 1.0)
    pipe = loaded_pipeline(save_locon(kind, locon, tmp_path))
    _, theirs = forward(pipe, inputs)

    assert (ours - forward(base, inputs)[1]).abs().max() > 1e-2
    assert (ours - attention_only).abs().max() > 1e-2, (
        "the conv adapters change nothing: the test cannot fail"
    )
    layers = adapter_layers(pipe.unet)
    assert len(layers) == 0  # diffusers' own (PEFT) layers, not ours
    peft_convs = [
        m for n, m in pipe.unet.named_modules() if n.endswith("resnets.0.conv1") and hasattr(m, "r")
    ]
    assert peft_convs and {m.r["default_0"] for m in peft_convs} == {CONV_RANK}
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_locon_adapter_metadata(locon, tmp_path):
    folder = save_locon("diffusers", locon, tmp_path)
    tensors = load_file(folder / "pytorch_lora_weights.safetensors")
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])

    assert tensors["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"].shape == (CONV_RANK, 32, 3, 3)
    assert tensors["unet.down_blocks.0.resnets.0.conv1.lora_B.weight"].shape == (32, CONV_RANK, 1, 1)
    assert tensors["unet.down_blocks.0.downsamplers.0.conv.lora_A.weight"].shape == (CONV_RANK, 32, 3, 3)
    conv = sorted(unet_conv_targets(build_tiny_pipeline(seed=0).unet))
    assert (adapter["unet.r"], adapter["unet.lora_alpha"]) == (RANK, ALPHA)  # the attention modules: most
    assert adapter["unet.rank_pattern"] == dict.fromkeys(conv, CONV_RANK)
    assert adapter["unet.alpha_pattern"] == dict.fromkeys(conv, CONV_ALPHA)
    assert len(adapter["unet.target_modules"]) == len(adapter_layers(locon.unet))

    d = describe(folder)
    assert (d["rank"], d["alpha"]) == (RANK, ALPHA)
    assert d["conv"] == {
        "modules": len(conv),
        "rank": CONV_RANK,
        "ranks": [CONV_RANK],
        "alpha": CONV_ALPHA,
        "alphas": [CONV_ALPHA],
    }


def test_without_alpha_pattern_diffusers_gives_the_convs_the_attention_alpha(locon, inputs, tmp_path):
    """What alpha_pattern is for: without it the convs get lora_alpha 2 at rank 2, scale 1 instead of 0.5."""
    folder = save_locon("diffusers", locon, tmp_path)
    file = folder / "pytorch_lora_weights.safetensors"
    with safe_open(str(file), "pt") as f:
        header = f.metadata()
    adapter = json.loads(header["lora_adapter_metadata"])
    del adapter["unet.alpha_pattern"]
    save_file(load_file(file), str(file), metadata=header | {"lora_adapter_metadata": json.dumps(adapter)})

    _, theirs = forward(loaded_pipeline(folder), inputs)
    set_conv_multiplier(locon, ALPHA / CONV_ALPHA)
    try:
        _, doubled_convs = forward(locon, inputs)
    finally:
        set_conv_multiplier(locon, 1.0)
    torch.testing.assert_close(theirs, doubled_convs, atol=1e-5, rtol=1e-5)


def test_a_locon_run_exports_what_diffusers_loads(locon, inputs, tmp_path):
    """training.export: each layer's own alpha, no single rank for the diffusers file, kohya's network args."""
    config = from_dict(
        {
            "model": {"base": "tiny"},
            "adapter": {
                "method": "lora",
                "rank": RANK,
                "alpha": ALPHA,
                "conv_rank": CONV_RANK,
                "conv_alpha": 1,
            },
            "export": {"export_dtype": "fp32"},
        }
    )
    files = export_adapters(
        Base(locon, FAMILIES["sd1"], "epsilon"),
        config,
        tmp_path / "run",
        step=10,
        val_loss=None,
        steps_run=10,
    )
    _, ours = forward(locon, inputs)

    for file in files.values():
        torch.testing.assert_close(forward(loaded_pipeline(file), inputs)[1], ours, atol=1e-5, rtol=1e-5)
    with safe_open(str(files["kohya"]), "pt") as f:
        network_args = json.loads(f.metadata()["ss_network_args"])
    assert network_args == {"conv_dim": "2", "conv_alpha": "1"}
