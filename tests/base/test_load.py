"""Loading the base model from a diffusers folder or a single LDM-layout checkpoint file."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer

from trilora.base.load import check_fits, expected_ldm_shapes, load_pipeline
from trilora.base.tiny import build_tiny_pipeline
from trilora.errors import UserError
from trilora.families.registry import FAMILIES
from trilora.families.sd1 import CONFIGS as SD15_DIR
from trilora.formats.ldm import ldm_state_dict, save_single_file

MODELS = ("unet", "vae", "text_encoder")


def unet_output(pipe):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample


def assert_same_weights(loaded, original):
    for name in MODELS:
        expected = getattr(original, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert got.keys() == expected.keys(), name
        for key, tensor in expected.items():
            assert torch.equal(got[key], tensor), f"{name}.{key}"


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def other_tiny():
    """A tiny pipeline whose weights differ from tiny_model_dir's, so a file's weights are told apart."""
    return build_tiny_pipeline(seed=1)


@pytest.fixture(scope="module")
def other_tiny_ldm(other_tiny):
    return ldm_state_dict(other_tiny.unet, other_tiny.vae, other_tiny.text_encoder)


def test_shipped_tokenizer_is_clip():
    tokenizer = CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77


def test_shipped_config_is_sd15_size():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_DIR / "unet"))
    assert sum(parameter.numel() for parameter in unet.parameters()) == 859_520_964


def test_loads_diffusers_folder(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    original = build_tiny_pipeline(seed=0)
    assert pipe.safety_checker is None
    assert not pipe.config.requires_safety_checker
    assert_same_weights(pipe, original)  # the weights bit for bit
    # Outputs only to a tolerance: weights read from safetensors sit at offset 8 + header length in the
    # file, not 16-byte aligned in general, and oneDNN then sums in another order (seen: 8e-7 apart).
    torch.testing.assert_close(unet_output(pipe), unet_output(original), rtol=1e-5, atol=1e-5)
    assert pipe.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt", "model.pt"])
def test_single_file_round_trip(tmp_path, tiny_model_dir, other_tiny, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_single_file(other_tiny, path)
    else:
        weights = load_file(save_single_file(other_tiny, tmp_path / "weights.safetensors"))
        # .ckpt as Lightning writes it (weights under "state_dict"), .pt as a plain dict
        torch.save({"state_dict": weights, "global_step": 7} if name.endswith(".ckpt") else weights, path)
    pipe = load_pipeline(path, base_config=tiny_model_dir)
    assert_same_weights(pipe, other_tiny)
    assert pipe.safety_checker is None


def test_a_single_file_loads_with_trilora_configs_for_its_family_else_the_shipped(
    tmp_path, tiny_model_dir, other_tiny, monkeypatch
):
    """$TRILORA_CONFIGS/<family>: configs a single file loads with in place of the shipped ones."""
    path = save_single_file(other_tiny, tmp_path / "model.safetensors")
    (tmp_path / "configs" / "sd2").mkdir(parents=True)  # another family's: not used for an SD 1.x file
    monkeypatch.setenv("TRILORA_CONFIGS", str(tmp_path / "configs"))
    with pytest.raises(UserError, match="sd15"):  # the shipped SD 1.5 configs, which do not fit a tiny file
        load_pipeline(path)
    (tmp_path / "configs" / "sd1").symlink_to(tiny_model_dir)
    assert_same_weights(load_pipeline(path), other_tiny)


def test_single_file_ignores_extra_tensors(tmp_path, tiny_model_dir, other_tiny, other_tiny_ldm):
    extra = {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "model_ema.decay": torch.tensor(0.999),
    }
    path = tmp_path / "model.safetensors"
    save_file({**other_tiny_ldm, **extra}, path)
    assert_same_weights(load_pipeline(path, base_config=tiny_model_dir), other_tiny)


def test_full_size_sd15_layout_fits_shipped_config():
    """The released SD 1.5 tensors (some copies store the VAE attention as Linear) plus extras pass the check."""
    shapes = expected_ldm_shapes(SD15_DIR / "x.ckpt", SD15_DIR, FAMILIES["sd1"])
    shapes = {name: shape[:2] if ".mid.attn_1." in name else shape for name, shape in shapes.items()}
    shapes["model_ema.decay"] = ()
    check_fits(
        SD15_DIR / "x.ckpt",
        shapes,
        expected_ldm_shapes(SD15_DIR / "x.ckpt", SD15_DIR, FAMILIES["sd1"]),
        SD15_DIR,
        FAMILIES["sd1"],
    )


def test_ckpt_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": Payload()}}, path)
    with pytest.raises(UserError, match="pickled") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)
    assert not marker.exists()


def test_missing_path(tmp_path):
    path = tmp_path / "nothing.safetensors"
    with pytest.raises(UserError, match="does not exist") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(UserError, match="model_index.json") as error:
        load_pipeline(tmp_path)
    assert_one_line_naming(error, tmp_path)


def test_diffusers_folder_without_weights():
    with pytest.raises(UserError) as error:
        load_pipeline(SD15_DIR)
    assert_one_line_naming(error, SD15_DIR)


def test_base_config_with_a_folder(tiny_model_dir):
    with pytest.raises(UserError, match="base-config") as error:
        load_pipeline(tiny_model_dir, base_config=tiny_model_dir)
    assert_one_line_naming(error, tiny_model_dir)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="extension") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_unreadable_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match="cannot read") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_truncated_file(tmp_path, other_tiny_ldm, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(other_tiny_ldm, path)
    else:
        torch.save(other_tiny_ldm, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)


def test_ckpt_without_a_dict(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError, match="list") as error:
        load_pipeline(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "first_stage_model.", "cond_stage_model."])
def test_checkpoint_without_a_part(tmp_path, other_tiny_ldm, prefix):
    path = tmp_path / "model.safetensors"
    save_file({k: v for k, v in other_tiny_ldm.items() if not k.startswith(prefix)}, path)
    with pytest.raises(
        UserError, match="not a Stable Diffusion 1.x checkpoint|holds no text encoder"
    ) as error:
        load_pipeline(path)
    assert prefix in str(error.value)
    assert_one_line_naming(error, path)


def test_checkpoint_missing_some_weights(tmp_path, tiny_model_dir, other_tiny_ldm):
    path = tmp_path / "model.safetensors"
    dropped = "model.diffusion_model.output_blocks.1.1.conv.weight"
    save_file({k: v for k, v in other_tiny_ldm.items() if k != dropped}, path)
    with pytest.raises(UserError, match=f"lacks 1 of .*{dropped}") as error:
        load_pipeline(path, base_config=tiny_model_dir)
    assert_one_line_naming(error, path)


def test_checkpoint_of_another_size_suggests_base_config(tmp_path, other_tiny):
    path = save_single_file(other_tiny, tmp_path / "tiny.safetensors")
    with pytest.raises(UserError, match="--base-config") as error:
        load_pipeline(path)  # the tiny model against the default SD 1.5 configuration
    assert str(SD15_DIR) in str(error.value)
    assert_one_line_naming(error, path)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, other_tiny):
    return save_single_file(other_tiny, tmp_path_factory.mktemp("tiny_file") / "tiny.safetensors")


def test_base_config_that_does_not_exist(tmp_path, tiny_file):
    config = tmp_path / "no-config"
    with pytest.raises(UserError, match="not a folder") as error:
        load_pipeline(tiny_file, base_config=config)
    assert str(config) in str(error.value)
    assert_one_line_naming(error, tiny_file)


def test_base_config_without_unet_config(tmp_path, tiny_file, tiny_model_dir):
    config = shutil.copytree(tiny_model_dir, tmp_path / "config")
    (config / "unet" / "config.json").unlink()
    with pytest.raises(UserError, match="unet/config.json") as error:
        load_pipeline(tiny_file, base_config=config)
    assert str(config) in str(error.value)
    assert_one_line_naming(error, tiny_file)


def test_base_config_with_broken_json(tmp_path, tiny_file, tiny_model_dir):
    config = shutil.copytree(tiny_model_dir, tmp_path / "config")
    (config / "vae" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="does not describe") as error:
        load_pipeline(tiny_file, base_config=config)
    assert str(config) in str(error.value)
    assert_one_line_naming(error, tiny_file)


def test_base_config_with_wrong_text_encoder(tmp_path, tiny_file, tiny_model_dir):
    config = shutil.copytree(tiny_model_dir, tmp_path / "config")
    text_config = config / "text_encoder" / "config.json"
    text_config.write_text(json.dumps({**json.loads(text_config.read_text()), "hidden_size": 48}))
    with pytest.raises(UserError, match="--base-config") as error:
        load_pipeline(tiny_file, base_config=config)
    assert "cond_stage_model" in str(error.value)
    assert_one_line_naming(error, tiny_file)
