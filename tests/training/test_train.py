"""Short real training runs on the tiny model: what a run writes, that it learns, that it stops."""

import csv
import json
import shutil

import pytest
import torch

from trilora.adapters.inject import add_adapters, load_adapter_state_dict, unet_targets
from trilora.base.load import load_pipeline
from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.formats.native import load_adapter
from trilora.training.loop import train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", count=12)


def config(tmp_path, tiny_model_dir, shapes, method="trilora", **overrides):
    data = {
        "output": str(tmp_path / "run"),
        "model": {"base": str(tiny_model_dir)},
        "data": {"data": str(shapes), "resolution": 32, "val_fraction": 0.25},
        "adapter": {"method": method, "rank": 4, "alpha": 2},
        "train": {"lr": 2e-3, "batch_size": 4, "steps": 40, "seed": 0},
        "validation": {"validate_every": 10, "patience": 0, "val_timesteps": 4},
    }
    for section, values in overrides.items():
        data[section] = data.get(section, {}) | values
    return from_dict(data)


@pytest.mark.parametrize("method", ["lora", "trilora"])
def test_short_run_learns_and_writes_everything(tmp_path, tiny_model_dir, shapes, method):
    cfg = config(
        tmp_path,
        tiny_model_dir,
        shapes,
        method,
        validation={"sample_prompt": ["a red circle"], "sample_steps": 2},
    )
    summary = train(cfg)
    out = tmp_path / "run"

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"step", "train_loss", "val_loss", "lr"} <= set(rows[0])
    assert [r["step"] for r in rows] == [str(s) for s in range(41)]
    val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert sorted(val) == [0, 10, 20, 30, 40]
    assert min(val[30], val[40]) < val[0] * 0.9, val  # the random tiny UNet is easy to improve on
    assert summary["best_step"] == min(val, key=val.get)
    assert summary["best_val_loss"] == pytest.approx(val[summary["best_step"]], rel=1e-4)
    assert summary["steps_run"] == 40 and summary["stopped_early"] is False
    assert {
        "method",
        "rank",
        "alpha",
        "steps_run",
        "best_step",
        "best_val_loss",
        "stopped_early",
        "exported",
    } <= set(json.loads((out / "summary.json").read_text()))
    for path in ["loss.png", "config.json", "best/adapter.safetensors", "last/adapter.safetensors",
                 "run.safetensors", "run-diffusers/pytorch_lora_weights.safetensors",
                 "samples/step-000000/00.png", "samples/step-000040/00.png"]:  # fmt: skip
        assert (out / path).is_file(), path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [0, 10, 20, 30, 40]
    assert [e.value for e in events.Scalars("val_loss")] == pytest.approx(
        [val[s] for s in sorted(val)], rel=1e-5
    )
    assert len(events.Scalars("train_loss")) == 40

    # The best checkpoint keeps the factors as trained (TriLoRA: three) and is what was exported.
    state, meta = load_adapter(out / "best" / "adapter.safetensors")
    assert meta["step"] == summary["best_step"] and meta["method"] == method
    assert any(k.endswith(".mid") for k in state) == (method == "trilora")


def test_exported_file_gives_the_best_adapter_in_diffusers(tmp_path, tiny_model_dir, shapes):
    train(config(tmp_path, tiny_model_dir, shapes, train={"steps": 20}))
    state, _ = load_adapter(tmp_path / "run" / "best" / "adapter.safetensors")

    ours = load_pipeline(tiny_model_dir)
    add_adapters(ours.unet, unet_targets(ours.unet), "trilora", 4, 2)
    load_adapter_state_dict(ours.unet, {k.removeprefix("unet."): v for k, v in state.items()})
    theirs = load_pipeline(tiny_model_dir)
    theirs.load_lora_weights(str(tmp_path / "run"), weight_name="run.safetensors")

    torch.manual_seed(0)
    latents, t, text = torch.randn(2, 4, 8, 8), torch.tensor([100, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = ours.unet(latents, t, text).sample
        got = theirs.unet(latents, t, text).sample
        base = load_pipeline(tiny_model_dir).unet(latents, t, text).sample
    assert (expected - base).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-2)  # fp16 export


def test_early_stopping_stops_and_exports_the_best(tmp_path, tiny_model_dir, shapes):
    # min_delta so large that no validation after the first counts as an improvement
    cfg = config(tmp_path, tiny_model_dir, shapes, train={"steps": 100},
                 validation={"validate_every": 2, "patience": 2, "min_delta": 1e6})  # fmt: skip
    summary = train(cfg)
    assert summary["stopped_early"] and summary["steps_run"] == 4 and summary["best_step"] == 0
    assert summary["exported_step"] == 0
    _, meta = load_adapter(tmp_path / "run" / "best" / "adapter.safetensors")
    assert meta["step"] == 0 and meta["val_loss"] == pytest.approx(summary["best_val_loss"])


# Scripted validations (step: loss, standard error, loss by timestep) where the three signals disagree:
# the full loss is lowest at step 5, the mid-range part (T/4 <= t < 3T/4: here t = 300) at step 10, and
# the rises after step 5 stay within their error bars, so the margin rule never runs out of patience.
SCRIPT = {0: (1.0, 0.01, {300: 1.0, 900: 1.0}), 5: (0.5, 0.01, {300: 0.9, 900: 0.1}),
          10: (0.6, 0.2, {300: 0.4, 900: 0.8}), 15: (0.62, 0.2, {300: 0.6, 900: 0.64}),
          20: (0.64, 0.2, {300: 0.6, 900: 0.68})}  # fmt: skip


@pytest.mark.parametrize("stop_on, best_step, steps_run", [("val_loss", 5, 15), ("val_loss_mid", 10, 20),
                                                           ("val_loss_se", 5, 20)])  # fmt: skip
def test_stop_on_chooses_what_each_signal_says(tmp_path, tiny_model_dir, shapes, monkeypatch, stop_on, best_step,
                                               steps_run):  # fmt: skip
    import trilora.training.loop as loop

    monkeypatch.setattr(loop, "validate", lambda r, state: SCRIPT[state.step])
    cfg = config(tmp_path, tiny_model_dir, shapes, train={"steps": 20},
                 validation={"validate_every": 5, "patience": 2, "stop_on": stop_on, "stop_window": 1})  # fmt: skip
    summary = train(cfg)
    assert (summary["best_step"], summary["steps_run"], summary["stop_on"]) == (best_step, steps_run, stop_on)
    assert summary["best_val_loss"] == SCRIPT[best_step][0] and summary["exported_step"] == best_step
    _, meta = load_adapter(tmp_path / "run" / "best" / "adapter.safetensors")
    assert meta["step"] == best_step


def test_single_file_base_with_base_config_and_text_encoder(tmp_path, tiny_model_dir, shapes):
    """Train against an LDM single-file checkpoint, text encoder included; diffusers' loader agrees."""
    from trilora.adapters.inject import text_encoder_targets
    from trilora.formats.ldm import save_single_file

    checkpoint = save_single_file(load_pipeline(tiny_model_dir), tmp_path / "tiny.safetensors")
    cfg = config(tmp_path, tiny_model_dir, shapes, model={"base": str(checkpoint), "base_config": str(tiny_model_dir)},
                 adapter={"train_text_encoder": True}, train={"steps": 10, "lr": 1e-2},
                 export={"export": "last", "export_dtype": "fp32"})  # fmt: skip
    summary = train(cfg)
    state, _ = load_adapter(tmp_path / "run" / "last" / "adapter.safetensors")
    assert any(k.startswith("text_encoder.") for k in state) and any(k.startswith("unet.") for k in state)

    ours = load_pipeline(tiny_model_dir)
    for part, model, targets in [("unet", ours.unet, unet_targets(ours.unet)),
                                 ("text_encoder", ours.text_encoder, text_encoder_targets(ours.text_encoder))]:  # fmt: skip
        add_adapters(model, targets, "trilora", 4, 2)
        load_adapter_state_dict(
            model, {k.removeprefix(part + "."): v for k, v in state.items() if k.startswith(part)}
        )
    theirs = load_pipeline(tiny_model_dir)
    theirs.load_lora_weights(summary["exported"]["diffusers"].rsplit("/", 1)[0])
    ids = ours.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = ours.text_encoder(ids)[0], theirs.text_encoder(ids)[0]
        base = load_pipeline(tiny_model_dir).text_encoder(ids)[0]
    assert (expected - base).abs().max() > 1e-4  # the text-encoder adapter trained
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_a_v_prediction_model_trains(tmp_path, tiny_model_dir, shapes):
    """The v-prediction branches (target, Min-SNR weights) in a real run: a tiny model whose
    scheduler predicts v, as SD 2.x's 768 models do."""
    base = tmp_path / "v_model"
    shutil.copytree(tiny_model_dir, base)
    scheduler_file = base / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text())
    scheduler_file.write_text(json.dumps(scheduler_config | {"prediction_type": "v_prediction"}))
    cfg = config(tmp_path, base, shapes, "lora", train={"min_snr_gamma": 5.0}, model={"base": str(base)})
    summary = train(cfg)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        val = {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]}
    assert min(val[30], val[40]) < val[0] * 0.9, val
    assert summary["exported"] and summary["best_step"] == min(val, key=val.get)


def test_a_nan_latent_stops_set_up_naming_the_image(tmp_path, tiny_model_dir, shapes, capsys):
    """A VAE that overflows (SDXL's in fp16 does) gives NaN latents; training on them gives NaN losses
    without a word. Set-up checks what it caches and names the image, before any step."""
    from safetensors.torch import load_file, save_file

    from trilora.cli import main

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["quant_conv.bias"] = torch.full_like(state["quant_conv.bias"], float("nan"))
    save_file(state, str(weights))
    output = tmp_path / "run"
    args = ["train", "--base", str(model), "--data", str(shapes), "--output", str(output), "--resolution", "32",
            "--steps", "2", "--val-fraction", "0"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trilora: error:") and "NaN" in err and str(shapes) in err and ".png" in err
    assert not output.exists()
