"""The families and how a model is matched to one: detection, the prediction type and where it comes
from, zero terminal SNR, the export header, and the full-size configs shipped for single files."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from trilora.adapters.inject import text_encoder_targets, unet_targets
from trilora.base.load import load_base, models_on_meta
from trilora.base.tiny import save_tiny_pipeline
from trilora.errors import UserError
from trilora.families import FAMILY_CHOICES, NAMES
from trilora.families.registry import FAMILIES, adapter_family
from trilora.formats.ldm import save_single_file


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """The tiny SD 2.x model as a folder and as a single file in the original layout."""
    root = tmp_path_factory.mktemp("sd2")
    folder = save_tiny_pipeline(root / "tiny", family="sd2")
    single = save_single_file(
        load_base(folder).pipe, root / "tiny.safetensors", FAMILIES["sd2"].ldm_state_dict
    )
    return folder, single


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_the_registry_lists_every_family_once():
    assert tuple(FAMILIES) == NAMES and FAMILY_CHOICES == ("auto", *NAMES)
    versions = [v for family in FAMILIES.values() for v in family.base_versions]
    assert len(versions) == len(set(versions))  # an adapter's header names one family
    assert adapter_family({"ss_base_model_version": "sd_v2_v"}) is FAMILIES["sd2"]
    assert adapter_family({"ss_base_model_version": "sdxl_base_v1-0"}) is FAMILIES["sdxl"]
    assert adapter_family({"ss_base_model_version": "flux1"}) is None and adapter_family({}) is None


def test_a_folder_of_no_family_is_one_line(tmp_path, tiny_model_dir):
    folder = tmp_path / "sd3"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(UserError) as error:
        load_base(folder)
    assert "StableDiffusion3Pipeline" in one_line(error) and "fits no model family" in str(error.value)


def test_an_sd2_file_needs_its_prediction_type_said_before_anything_loads(sd2, tmp_path):
    folder, single = sd2
    with pytest.raises(UserError) as error:
        load_base(single)  # the shipped SD 2.1 configs: ε and v models have the same tensors
    assert "--prediction-type epsilon or --prediction-type v_prediction" in one_line(error)
    assert load_base(single, base_config=folder).prediction_type == "v_prediction"  # the configs say it
    eps = load_base(single, base_config=folder, prediction_type="epsilon")
    assert eps.prediction_type == eps.pipe.scheduler.config.prediction_type == "epsilon"
    assert FAMILIES["sd2"].header("epsilon") == {
        "ss_base_model_version": "sd_v2", "ss_v2": "True",
        "modelspec.architecture": "stable-diffusion-v2-512/lora", "modelspec.prediction_type": "epsilon"}  # fmt: skip


def test_markers_in_a_file_say_v_prediction_and_zero_terminal_snr(tmp_path, tiny_model_dir):
    plain = save_single_file(load_base(tiny_model_dir).pipe, tmp_path / "plain.safetensors")
    marked = tmp_path / "marked.safetensors"
    save_file(load_file(str(plain)) | {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(marked))
    base = load_base(marked, base_config=tiny_model_dir)  # SD 1.x configs say ε; the markers win
    scheduler = base.pipe.scheduler
    assert base.prediction_type == scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr and scheduler.alphas_cumprod[-1] < 1e-6
    assert FAMILIES["sd1"].header("v_prediction")["ss_base_model_version"] == "sd_v1_v"
    assert load_base(plain, base_config=tiny_model_dir).prediction_type == "epsilon"


def test_zero_terminal_snr_needs_v_prediction(sd2, tiny_model_dir):
    folder, _ = sd2
    base = load_base(folder, zero_terminal_snr=True)
    assert (
        base.pipe.scheduler.alphas_cumprod[-1] < 1e-6
        and base.pipe.scheduler.config.timestep_spacing == "trailing"
    )
    with pytest.raises(UserError) as error:
        load_base(tiny_model_dir, zero_terminal_snr=True)  # an ε model
    assert "--zero-terminal-snr needs v prediction" in one_line(error)


@pytest.mark.parametrize("name, te_layers, te_targets", [("sd1", (12,), (72,)), ("sd2", (23,), (138,)),
                                                        ("sdxl", (12, 32), (72, 192))])  # fmt: skip
def test_the_shipped_full_size_configs(name, te_layers, te_targets):
    """SD 1.5's, SD 2.1 768-v's and SDXL base's configs: kohya's default UNet targets (192; SDXL's
    722), 6 per text-encoder layer (SD 2.x uses 23 of OpenCLIP's 24 blocks; SDXL's second encoder is
    bigG's 32 with its projection), and SD 2.1's attention computed in fp32."""
    family = FAMILIES[name]
    models = models_on_meta(family.configs, family)
    unet, texts = models["unet"], [models[part] for part in family.text_encoders]
    assert len(unet_targets(unet)) == (722 if name == "sdxl" else 192)
    assert tuple(len(text_encoder_targets(text)) for text in texts) == te_targets
    assert tuple(text.config.num_hidden_layers for text in texts) == te_layers
    assert bool(unet.config.upcast_attention) == (name == "sd2")
    assert unet.config.use_linear_projection == (name != "sd1")
    if name == "sdxl":  # the widths the conditioning adds up: 768 + 1280 tokens, 6 x 256 + 1280 pooled
        assert unet.config.cross_attention_dim == sum(text.config.hidden_size for text in texts) == 2048
        assert unet.config.projection_class_embeddings_input_dim == 6 * 256 + texts[1].config.projection_dim
        assert type(texts[1]).__name__ == "CLIPTextModelWithProjection"
        assert models["vae"].config.scaling_factor == 0.13025 and models["vae"].config.force_upcast


def test_the_default_resolution_is_the_familys(sd2, tiny_model_dir, tmp_path, capsys):
    """Without --resolution: 768 for an SD 2.x v-prediction model, 512 otherwise (the dry run says it
    and trains nothing)."""
    from trilora.cli import main

    folder, single = sd2
    for base, extra, size in [(folder, [], 768), (single, ["--prediction-type", "epsilon"], 512),
                              (tiny_model_dir, [], 512), (folder, ["--resolution", "64"], 64)]:  # fmt: skip
        (tmp_path / "data").mkdir(exist_ok=True)
        args = [
            "train",
            "--base",
            str(base),
            "--data",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "run"),
            "--dry-run",
        ]
        if base == single:
            extra = [*extra, "--base-config", str(folder)]
        assert main([*args, *extra]) == 0
        assert f"{size}x{size} px" in capsys.readouterr().out


def test_an_adapter_given_as_the_base_model_is_named_as_one(lora_file):
    with pytest.raises(UserError) as error:
        load_base(lora_file)
    assert "is a LoRA adapter, not a base model" in one_line(error)
