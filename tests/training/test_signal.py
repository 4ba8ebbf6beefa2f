"""The generation stopping signal: which scorer `--stop-on auto` finds, what the toy judge scores, and
that stopping and the best checkpoint follow the signal rather than the validation loss."""

from dataclasses import replace

import pytest

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.errors import UserError
from trilora.scorers import stopping_scorer
from trilora.toy.base import build_toy_pipeline
from trilora.toy.signal import is_toy_world, toy_scorer
from trilora.toy.world import Attributes, caption, render
from trilora.training.signal import generation_signal

TOY = [
    Attributes("onion", colour, floors, "day") for colour, floors in [("red", 1), ("green", 3), ("blue", 2)]
]


def run_config(tmp_path, base, **validation):
    return from_dict({"output": str(tmp_path / "run"), "model": {"base": str(base)},
                      "data": {"data": str(tmp_path), "resolution": 32}, "validation": validation})  # fmt: skip


@pytest.fixture(scope="module")
def toy_pipe():
    return build_toy_pipeline(0)


def test_the_toy_world_is_told_by_its_unet(toy_pipe, tiny_model_dir):
    from trilora.base.load import load_pipeline

    assert is_toy_world(toy_pipe.unet) and not is_toy_world(load_pipeline(tiny_model_dir).unet)


def test_the_judge_scores_renders_of_the_prompts_above_renders_of_others():
    prompts = [caption(a) for a in TOY]
    score = toy_scorer(prompts)
    assert score([render(a, 7 + k) for k, a in enumerate(TOY)], prompts) == 1.0
    assert score([render(a, 7 + k) for k, a in enumerate(reversed(TOY))], prompts) < 1.0
    assert toy_scorer(["a photo of a cat", *prompts]) is None  # not the judge's language


def test_the_toy_signal_is_the_style_hit_times_the_fidelity_scored_apart():
    """The long bench's chosen signal: an image in the style with the wrong colour counts for style,
    an image with the right colour in another style counts for fidelity (the joint hit would count
    neither)."""
    prompts = [caption(a) for a in TOY]
    score = toy_scorer(prompts)
    style_only = [replace(TOY[0], colour="white"), replace(TOY[1], colour="white"), TOY[2]]
    fidelity_only = [replace(a, style="gothic") if k == 0 else a for k, a in enumerate(TOY)]
    images = [render(a, 7 + k) for k, a in enumerate(style_only[:2] + [replace(TOY[2], style="gothic")])]
    # style hit 2/3 (two onion renders in white, one gothic), fidelity 1/3 (only the gothic one as asked)
    assert score(images, prompts) == pytest.approx(2 / 3 * 1 / 3)
    assert score([render(a, 7 + k) for k, a in enumerate(fidelity_only)], prompts) == pytest.approx(2 / 3)


def test_auto_finds_a_scorer_or_falls_back_to_the_validation_loss(tmp_path, toy_pipe, tiny_model_dir):
    from trilora.base.load import load_pipeline

    captions = [caption(a) for a in TOY]
    stop_on, signal = generation_signal(
        run_config(tmp_path, "x"), toy_pipe, captions + captions, "cpu", stopping_scorer
    )
    assert stop_on == "generation" and signal.prompts == captions and signal.scorer.name == "the toy judge"
    assert len(set(signal.seeds)) == 3 and signal.scorer.guidance == 3.0
    tiny = load_pipeline(tiny_model_dir)
    assert generation_signal(run_config(tmp_path, "x"), tiny, captions, "cpu", stopping_scorer) == (
        "val_loss",
        None,
    )
    assert generation_signal(run_config(tmp_path, "x"), toy_pipe, ["a red cat"], "cpu", stopping_scorer) == (
        "val_loss",
        None,
    )
    assert generation_signal(run_config(tmp_path, "x", stop_on="val_loss_mid"), toy_pipe, captions, "cpu", stopping_scorer) == (
        "val_loss_mid", None)  # fmt: skip
    with pytest.raises(UserError, match="--stop-on generation needs a scorer: give --clip-model"):
        generation_signal(
            run_config(tmp_path, "x", stop_on="generation"), tiny, captions, "cpu", stopping_scorer
        )
    with pytest.raises(UserError, match="nowhere"):  # a wrong CLIP folder stops here, before any long work
        generation_signal(
            run_config(tmp_path, "x", clip_model=str(tmp_path / "nowhere")),
            tiny,
            captions,
            "cpu",
            stopping_scorer,
        )
    chosen = run_config(tmp_path, "x", signal_prompt=[captions[1]])
    assert generation_signal(chosen, toy_pipe, captions, "cpu", stopping_scorer)[1].prompts == [captions[1]]
    # a caller that hands no scorer in (a library user's train(config)) stops on the loss
    assert generation_signal(run_config(tmp_path, "x"), toy_pipe, captions, "cpu", None) == ("val_loss", None)


# Scripted: the validation loss of the tiny model falls all run long; the signal peaks at step 10.
SIGNAL = {0: 0.1, 5: 0.5, 10: 0.9, 15: 0.6, 20: 0.7}


def test_stopping_and_the_best_checkpoint_follow_the_signal(tmp_path, tiny_model_dir, monkeypatch):
    import trilora.training.setup as setup_module
    from trilora.formats.native import load_adapter
    from trilora.training.loop import train
    from trilora.training.metrics import read_metrics

    class Scripted:
        prompts: list[str] = []

        def measure(self, pipe, resolution, device, autocast):
            return SIGNAL[steps.pop(0)], []  # no images: no contact sheet

    steps = sorted(SIGNAL)
    monkeypatch.setattr(setup_module, "generation_signal", lambda *a: ("generation", Scripted()))
    data = make_shapes_dataset(tmp_path / "data", count=12)
    config = from_dict({"output": str(tmp_path / "run"), "model": {"base": str(tiny_model_dir)},
                        "data": {"data": str(data), "resolution": 32, "val_fraction": 0.25},
                        "adapter": {"rank": 4}, "train": {"lr": 2e-3, "batch_size": 4, "steps": 40},
                        "validation": {"validate_every": 5, "patience": 2, "val_timesteps": 2, "stop_window": 1}})  # fmt: skip
    summary = train(config)
    assert (summary["best_step"], summary["steps_run"], summary["stop_on"]) == (10, 20, "generation")
    rows = {row["step"]: row for row in read_metrics(tmp_path / "run" / "metrics.csv")}
    assert {s: rows[s]["signal"] for s in SIGNAL} == pytest.approx(SIGNAL)
    assert rows[20]["val_loss"] < rows[10]["val_loss"]  # the loss alone would have kept step 20
    assert load_adapter(tmp_path / "run" / "best" / "adapter.safetensors")[1]["step"] == 10


def test_a_stop_window_follows_the_mean_of_the_last_validations(tmp_path, tiny_model_dir, monkeypatch):
    """--stop-window 2: the spike at step 10 does not win; the best two in a row end at step 15."""
    import trilora.training.setup as setup_module
    from trilora.training.loop import train

    signal = {0: 0.1, 5: 0.5, 10: 0.9, 15: 0.6, 20: 0.7, 25: 0.2, 30: 0.1}
    steps = sorted(signal)

    class Scripted:
        prompts: list[str] = []

        def measure(self, pipe, resolution, device, autocast):
            return signal[steps.pop(0)], []

    monkeypatch.setattr(setup_module, "generation_signal", lambda *a: ("generation", Scripted()))
    data = make_shapes_dataset(tmp_path / "data", count=12)
    config = from_dict({"output": str(tmp_path / "run"), "model": {"base": str(tiny_model_dir)},
                        "data": {"data": str(data), "resolution": 32, "val_fraction": 0.25},
                        "adapter": {"rank": 4}, "train": {"lr": 2e-3, "batch_size": 4, "steps": 40},
                        "validation": {"validate_every": 5, "patience": 2, "val_timesteps": 2, "stop_window": 2}})  # fmt: skip
    summary = train(config)
    assert (summary["best_step"], summary["steps_run"]) == (15, 25)  # means .75 at 15, then .65 and .45
