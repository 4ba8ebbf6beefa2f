"""The contract every model family passes before it is listed (README: Model families), run on the
family's tiny random-weight model, in each prediction type the family comes in: it loads from a
diffusers folder and from a single file in the original layout, trains, resumes bit-exactly after a
kill, exports files that diffusers' loader and `trilora inspect` read back exactly and completely,
generates with its adapter, and estimates a run with --dry-run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from trilora.adapters.inject import (
    add_adapters,
    load_adapter_state_dict,
    of_part,
    text_encoder_targets,
    unet_targets,
)
from trilora.base.detect import V_MARKER
from trilora.base.load import load_base
from trilora.base.tiny import make_shapes_dataset, save_tiny_pipeline
from trilora.cli import main
from trilora.errors import UserError
from trilora.families.registry import FAMILIES
from trilora.files import save_safetensors
from trilora.formats.inspect import describe
from trilora.formats.ldm import save_single_file
from trilora.formats.native import load_adapter

pytestmark = pytest.mark.slow
STEPS, RANK, ALPHA = 4, 2, 2.0
# every family in the prediction type of its shipped configs; SDXL also as a v-prediction derivative
# (NoobAI-XL v-pred and the like): its folder's scheduler says so, its single file carries `v_pred`
VARIANTS = [(name, None) for name in FAMILIES] + [("sdxl", "v_prediction")]
# the kohya names of each family's UNet and text-encoder modules, as every loader expects them
KOHYA_NAMES = {"sd1": ("lora_unet_down_blocks_", ("lora_te_text_model_encoder_layers_",)),
               "sd2": ("lora_unet_down_blocks_", ("lora_te_text_model_encoder_layers_",)),
               "sdxl": ("lora_unet_input_blocks_", ("lora_te1_text_model_encoder_layers_",
                                                     "lora_te2_text_model_encoder_layers_"))}  # fmt: skip


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v[0] + ("-" + v[1] if v[1] else ""))
def family(request, tmp_path_factory):
    """(the Family, its tiny model as a diffusers folder, the same weights as one single file, a dataset)."""
    name, prediction = request.param
    root = tmp_path_factory.mktemp(name)
    folder = save_tiny_pipeline(root / "tiny", seed=0, family=name)
    found = FAMILIES[name]
    single = save_single_file(load_base(folder).pipe, root / "tiny.safetensors", found.ldm_state_dict)
    if prediction:
        scheduler = folder / "scheduler" / "scheduler_config.json"
        scheduler.write_text(json.dumps(json.loads(scheduler.read_text()) | {"prediction_type": prediction}))
        save_safetensors(load_file(str(single)) | {V_MARKER: torch.zeros(0)}, single)
    return found, folder, single, make_shapes_dataset(root / "data", count=8)


def parts(pipe, found):
    """The family's models that carry adapters: {part name: model}."""
    return {part: getattr(pipe, part) for part in found.parts}


def denoise(found, pipe, latents, t, text):
    """The family's UNet call as training makes it (a 32 px image's size conditioning for SDXL)."""
    sizes = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).expand(len(latents), -1)
    return found.denoise(pipe.unet, latents, t, text, sizes)


def lora_layers(model) -> int:
    """How many of a model's layers diffusers' loader gave a LoRA (PEFT's lora_A)."""
    return sum(1 for module in model.modules() if hasattr(module, "lora_A") and len(module.lora_A))


def train_args(folder, data, output, *extra):
    return ["train", "--base", str(folder), "--data", str(data), "--output", str(output), "--resolution", "32",
            "--val-fraction", "0.25", "--rank", str(RANK), "--alpha", str(ALPHA), "--train-text-encoder",
            "--steps", str(STEPS), "--batch-size", "2", "--lr", "0.003", "--validate-every", "2",
            "--val-timesteps", "2", "--stop-on", "val_loss", "--checkpoint-every", "1", "--export-dtype", "fp32",
            *extra]  # fmt: skip


def start(args):
    """Each run of the resume check in its own process: one thread count for all (CPU reductions
    differ in the last bit between thread counts)."""
    return subprocess.Popen([sys.executable, "-m", "trilora", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(process):
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return err


@pytest.fixture(scope="module")
def trained(family, tmp_path_factory):
    """An uninterrupted run and one killed after its second checkpoint and resumed."""
    _, folder, _, data = family
    root = tmp_path_factory.mktemp("runs")
    log = finish(start(train_args(folder, data, root / "whole")))
    killed = start(train_args(folder, data, root / "killed"))
    checkpoint = root / "killed" / "checkpoints" / "step-000002" / "state.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    finish(start(["train", "--resume", str(root / "killed")]))
    return root / "whole", root / "killed", log


def test_loads_from_a_folder_and_a_single_file_with_the_same_weights(family):
    found, folder, single, _ = family
    from_folder = load_base(folder)
    from_file = load_base(single, base_config=folder)
    assert from_folder.family is found and from_file.family is found
    assert from_file.prediction_type == from_folder.prediction_type
    assert from_folder.pipe.scheduler.config.prediction_type == from_folder.prediction_type
    for part in ("vae", *found.parts):
        a, b = getattr(from_folder.pipe, part).state_dict(), getattr(from_file.pipe, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_another_family_by_name_is_one_line_naming_both(family):
    found, folder, single, _ = family
    other = next(f for f in FAMILIES.values() if f is not found)
    for path in (folder, single):
        with pytest.raises(UserError) as error:
            load_base(path, family=other.name)
        message = str(error.value)
        assert "\n" not in message and found.title in message and other.title in message


def test_resume_after_a_kill_is_bit_exact(trained):
    whole, killed, _ = trained
    for name in ("last/adapter.safetensors", "best/adapter.safetensors", "whole.safetensors"):
        a = load_file(str(whole / name))
        b = load_file(str(killed / (name.replace("whole", "killed"))))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_log_names_the_family_and_prediction_type(family, trained):
    found, _, _, _ = family
    assert f"base model: {found}" in trained[2]


def test_exports_read_back_exactly_and_say_their_family(family, trained, tmp_path):
    found, folder, _, _ = family
    whole = trained[0]
    summary = json.loads((whole / "summary.json").read_text())
    state, meta = load_adapter(whole / "best" / "adapter.safetensors")
    base = load_base(folder)
    ours = base.pipe  # our adapters, as trained
    for part, model in parts(ours, found).items():
        targets = unet_targets(model) if part == "unet" else text_encoder_targets(model)
        add_adapters(model, targets, "trilora", RANK, ALPHA)
        load_adapter_state_dict(model, of_part(part, state))
    header = found.header(base.prediction_type)
    ids = found.tokenize(ours, ["a red circle"])
    latents, t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        text = found.encode(ours, ids)
        expected = denoise(found, ours, latents, t, text)
        untrained = denoise(found, load_base(folder).pipe, latents, t, text)
    assert (expected - untrained).abs().max() > 1e-5  # the adapter changes the UNet
    for kind, file in summary["exported"].items():
        with safe_open(file, "pt") as f:
            metadata, modules = (
                f.metadata(),
                {k.rsplit(".", 2)[0] for k in f.keys() if "lora_A" in k or "lora_down" in k},
            )
        assert {key: metadata[key] for key in header} == header, kind
        assert describe(file)["family"] == str(found)
        theirs = load_base(folder).pipe
        theirs.load_lora_weights(os.path.dirname(file), weight_name=os.path.basename(file))
        # every module of the file became a LoRA layer: none was left over
        assert sum(lora_layers(model) for model in parts(theirs, found).values()) == len(modules), kind
        with torch.no_grad():
            torch.testing.assert_close(found.encode(theirs, ids), text, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                denoise(found, theirs, latents, t, text), expected, atol=1e-5, rtol=1e-4
            )
    unet_prefix, text_prefixes = KOHYA_NAMES[found.name]
    names = {k.split(".")[0] for k in load_file(summary["exported"]["kohya"])}
    assert any(name.startswith(unet_prefix) for name in names)
    assert all(name.startswith(("lora_unet_", *text_prefixes)) for name in names)
    assert all(any(name.startswith(prefix) for name in names) for prefix in text_prefixes)


def test_generates_with_its_adapter_and_refuses_another_familys(family, trained, tmp_path, capsys):
    found, folder, _, _ = family
    kohya = trained[0] / "whole.safetensors"
    common = ["generate", "--base", str(folder), "--prompt", "a red circle", "--steps", "2", "--height", "32",
              "--width", "32", "--seed", "3"]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "base.png")]) == 0
    assert main([*common, "--lora", f"{kohya}:4", "--output", str(tmp_path / "lora.png")]) == 0
    base, lora = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("base", "lora"))
    assert np.abs(lora - base).mean() > 0
    other = next(f for f in FAMILIES.values() if f is not found)
    foreign = tmp_path / "foreign.safetensors"
    tensors = load_file(str(kohya))
    with safe_open(str(kohya), "pt") as f:
        metadata = dict(f.metadata()) | other.header("epsilon")
    from safetensors.torch import save_file

    save_file(tensors, str(foreign), metadata)
    capsys.readouterr()
    assert main([*common, "--lora", str(foreign), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trilora: error:") and "\n" not in err and found.title in err and other.title in err
    assert not (tmp_path / "x.png").exists()


def test_dry_run_estimates_the_run(family, tmp_path, capsys):
    found, folder, single, data = family
    assert main([*train_args(folder, data, tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(found) in out and "trainable parameters" in out and not (tmp_path / "dry").exists()
    assert main([*train_args(single, data, tmp_path / "dry"), "--base-config", str(folder), "--dry-run"]) == 0
    assert str(found) in capsys.readouterr().out
