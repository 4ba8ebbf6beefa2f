"""The contract every model family passes before it is listed (README: Model families), run on the
family's tiny random-weight model: it loads from a diffusers folder and from a single file in the
original layout, trains, resumes bit-exactly after a kill, exports files that diffusers' loader and
`trilora inspect` read back exactly, generates with its adapter, and estimates a run with --dry-run.
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
from trilora.base.load import load_base
from trilora.base.tiny import make_shapes_dataset, save_tiny_pipeline
from trilora.cli import main
from trilora.errors import UserError
from trilora.families import NAMES
from trilora.families.registry import FAMILIES
from trilora.formats.inspect import describe
from trilora.formats.ldm import save_single_file
from trilora.formats.native import load_adapter

pytestmark = pytest.mark.slow
STEPS, RANK, ALPHA = 4, 2, 2.0


@pytest.fixture(scope="module", params=NAMES)
def family(request, tmp_path_factory):
    """(the Family, its tiny model as a diffusers folder, the same weights as one single file, a dataset)."""
    root = tmp_path_factory.mktemp(request.param)
    folder = save_tiny_pipeline(root / "tiny", seed=0, family=request.param)
    found = FAMILIES[request.param]
    single = save_single_file(load_base(folder).pipe, root / "tiny.safetensors", found.ldm_state_dict)
    return found, folder, single, make_shapes_dataset(root / "data", count=8)


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
    for part in ("unet", "vae", "text_encoder"):
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
    for part, model, targets in [("unet", ours.unet, unet_targets(ours.unet)),
                                 ("text_encoder", ours.text_encoder, text_encoder_targets(ours.text_encoder))]:  # fmt: skip
        add_adapters(model, targets, "trilora", RANK, ALPHA)
        load_adapter_state_dict(model, of_part(part, state))
    header = found.header(base.prediction_type)
    ids = ours.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents, t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        text = ours.text_encoder(ids)[0]
        expected = ours.unet(latents, t, text).sample
    untrained = load_base(folder).pipe.unet(latents, t, text).sample.detach()
    assert (expected - untrained).abs().max() > 1e-5  # the adapter changes the UNet
    for kind, file in summary["exported"].items():
        with safe_open(file, "pt") as f:
            metadata = f.metadata()
        assert {key: metadata[key] for key in header} == header, kind
        assert describe(file)["family"] == str(found)
        theirs = load_base(folder).pipe
        theirs.load_lora_weights(os.path.dirname(file), weight_name=os.path.basename(file))
        with torch.no_grad():
            torch.testing.assert_close(theirs.text_encoder(ids)[0], text, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(theirs.unet(latents, t, text).sample, expected, atol=1e-5, rtol=1e-4)
    te_names = [k for k in load_file(summary["exported"]["kohya"]) if k.startswith("lora_te_")]
    assert te_names and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_names)


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
