"""`trilora inspect`: format, method, rank, alpha and module counts of every file trilora writes or reads."""

from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trilora.cli import main
from trilora.errors import UserError
from trilora.families.registry import FAMILIES
from trilora.formats.diffusers_lora import save_diffusers
from trilora.formats.inspect import describe, format_description
from trilora.formats.kohya import conv_network_args, save_kohya
from trilora.formats.metadata import kohya_metadata
from trilora.formats.native import save_adapter

RANK, ALPHA = 4, 2.0
CONV_RANK, CONV_ALPHA = 2, 1.0
CONV_MODULES = ("down_blocks.0.resnets.0.conv1", "up_blocks.0.upsamplers.0.conv")  # LoCon's 3x3 convs
UNET_MODULES = (  # (module path, in, out); proj_in is a 1x1 conv
    ("down_blocks.0.attentions.0.proj_in", 32, 32),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 32, 32),
    ("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", 128, 32),
)
TEXT_MODULES = (("encoder.layers.0.self_attn.q_proj", 32, 32), ("encoder.layers.1.mlp.fc1", 32, 64))


@pytest.fixture(scope="module")
def pairs():
    torch.manual_seed(0)
    pairs = {}
    for part, modules in (("unet", UNET_MODULES), ("text_encoder", TEXT_MODULES)):
        for path, fan_in, fan_out in modules:
            kernel = (1, 1) if path.endswith("proj_in") else ()
            down = torch.randn(RANK, fan_in, *kernel)
            up = torch.randn(fan_out, RANK, *kernel)
            pairs[f"{part}.{path}"] = (down, up)
    return pairs


@pytest.fixture(scope="module")
def metadata():
    info = {
        "method": "trilora",
        "rank": RANK,
        "alpha": ALPHA,
        "sigma_init": "svd",
        "best_step": 40,
        "name": "cat",
    }
    return kohya_metadata(info, FAMILIES["sd1"].header("epsilon"))


@pytest.fixture(scope="module")
def kohya_file(pairs, metadata, tmp_path_factory):
    return save_kohya(tmp_path_factory.mktemp("kohya") / "cat.safetensors", pairs, ALPHA, metadata)


@pytest.fixture(scope="module")
def diffusers_folder(pairs, metadata, tmp_path_factory):
    return save_diffusers(
        tmp_path_factory.mktemp("diffusers") / "cat-diffusers", pairs, RANK, ALPHA, metadata=metadata
    )


def test_kohya_file(kohya_file):
    d = describe(kohya_file)
    assert d["format"] == "kohya"
    assert d["method"] == "trilora"
    assert d["trainer"] == f"trilora {version('trilora')}"
    assert (d["rank"], d["alpha"]) == (RANK, ALPHA)
    assert d["modules"] == {"unet": 3, "text_encoder": 2}
    assert d["dtype"] == "float16"
    assert d["metadata"]["trilora_best_step"] == "40"


def test_diffusers_file_and_folder(diffusers_folder):
    for path in (diffusers_folder, diffusers_folder / "pytorch_lora_weights.safetensors"):
        d = describe(path)
        assert d["file"] == str(diffusers_folder / "pytorch_lora_weights.safetensors")
        assert d["format"] == "diffusers-peft"
        assert d["method"] == "trilora"
        assert (d["rank"], d["alpha"]) == (RANK, ALPHA)
        assert d["modules"] == {"unet": 3, "text_encoder": 2}


def test_description_text(kohya_file):
    text = format_description(describe(kohya_file))
    assert f"method:   trilora (trained with trilora {version('trilora')}; Sigma folded into lora_up)" in text
    assert "rank:     4\n" in text
    assert "alpha:    2 (scale alpha/rank = 0.5)\n" in text
    assert "modules:  unet 3, text encoder 2\n" in text
    assert "  ss_network_dim: 4\n" in text
    assert max(len(line) for line in text.splitlines()) < 120  # the config JSON is shortened


def test_files_of_other_trainers(pairs, tmp_path):
    """No trilora metadata: method unknown; a kohya module without alpha has alpha = rank."""
    kohya = save_kohya(tmp_path / "other.safetensors", pairs, ALPHA, {})
    tensors = {k: v for k, v in load_file(kohya).items() if "text_model" not in k or not k.endswith(".alpha")}
    save_file(tensors, kohya)
    d = describe(kohya)
    assert d["method"] == "lora (unknown trainer)" and d["trainer"] is None
    assert d["rank"] == RANK
    assert (d["alpha"], d["alphas"]) == (None, [ALPHA, RANK])

    folder = save_diffusers(tmp_path / "other", pairs, RANK, ALPHA)
    file = folder / "pytorch_lora_weights.safetensors"
    save_file(load_file(file), file, metadata={"format": "pt"})  # as written by a writer that drops alpha
    d = describe(folder)
    assert d["method"] == "lora (unknown trainer)"
    assert (d["rank"], d["alpha"], d["alphas"]) == (RANK, None, [])
    assert "alpha:    not stored (loaders use alpha = rank)" in format_description(d)


@pytest.fixture(scope="module")
def locon_pairs(pairs):
    """The pairs plus two 3x3-conv pairs of another rank, and alpha per module."""
    torch.manual_seed(1)
    conv = {
        f"unet.{path}": (torch.randn(CONV_RANK, 32, 3, 3), torch.randn(32, CONV_RANK, 1, 1))
        for path in CONV_MODULES
    }
    alphas = dict.fromkeys(pairs, ALPHA) | dict.fromkeys(conv, CONV_ALPHA)
    return pairs | conv, alphas


def test_locon_files_report_the_conv_rank_and_alpha(locon_pairs, metadata, tmp_path):
    pairs, alphas = locon_pairs
    header = metadata | conv_network_args(CONV_RANK, CONV_ALPHA)
    kohya = save_kohya(tmp_path / "locon.safetensors", pairs, alphas, header)
    folder = save_diffusers(tmp_path / "locon-diffusers", pairs, None, alphas, metadata=header)
    state = {}
    for key, (down, up) in pairs.items():
        state |= {f"{key}.down": down, f"{key}.mid": torch.eye(down.shape[0]), f"{key}.up": up}
    checkpoint = tmp_path / "adapter.safetensors"
    info = {
        "method": "trilora",
        "rank": RANK,
        "alpha": ALPHA,
        "conv_rank": CONV_RANK,
        "conv_alpha": CONV_ALPHA,
    }
    save_adapter(checkpoint, state, info)

    for path, kind in ((kohya, "kohya"), (folder, "diffusers-peft"), (checkpoint, "trilora checkpoint")):
        d = describe(path)
        assert d["format"] == kind
        assert (d["rank"], d["ranks"], d["alpha"], d["alphas"]) == (RANK, [RANK], ALPHA, [ALPHA]), kind
        assert d["conv"] == {
            "modules": 2, "rank": CONV_RANK, "ranks": [CONV_RANK], "alpha": CONV_ALPHA, "alphas": [CONV_ALPHA],
        }, kind  # fmt: skip
        assert d["modules"] == {"unet": 5, "text_encoder": 2}, kind
        text = format_description(d)
        assert "rank:     4\n" in text
        assert "alpha:    2 (scale alpha/rank = 0.5)\n" in text
        assert "conv:     rank 2, alpha 1 (scale 0.5), 2 modules (LoCon)\n" in text
    assert '  ss_network_args: {"conv_dim": "2", "conv_alpha": "1"}\n' in format_description(describe(kohya))


def test_files_without_conv_adapters_have_no_conv_line(kohya_file):
    assert describe(kohya_file)["conv"] is None
    assert "conv:" not in format_description(describe(kohya_file))


def test_trilora_checkpoint(pairs, tmp_path):
    state = {}
    for key, (down, up) in pairs.items():
        state |= {f"{key}.down": down, f"{key}.mid": torch.eye(RANK), f"{key}.up": up}
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, state, {"method": "trilora", "rank": RANK, "alpha": ALPHA, "step": 40})
    d = describe(path)
    assert d["format"] == "trilora checkpoint"
    assert d["method"] == "trilora"
    assert (d["rank"], d["alpha"]) == (RANK, ALPHA)
    assert d["modules"] == {"unet": 3, "text_encoder": 2}


def test_files_that_are_not_loras(tmp_path):
    model = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, model)
    with pytest.raises(UserError, match=r"unet.safetensors is not a LoRA file"):
        describe(model)

    text = tmp_path / "readme.safetensors"
    text.write_text("hello")
    with pytest.raises(UserError, match=r"cannot read .*readme.safetensors as a safetensors file"):
        describe(text)

    with pytest.raises(UserError, match=r"missing.safetensors"):
        describe(tmp_path / "missing.safetensors")


def test_cli(kohya_file, tmp_path, capsys):
    assert main(["inspect", str(kohya_file)]) == 0
    assert "format:   kohya" in capsys.readouterr().out

    assert main(["inspect", str(Path(tmp_path) / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
