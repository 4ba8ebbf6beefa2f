"""The shipped toy base model: SD 1.x's architecture, small, and as good as the README says."""

import json

import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from trilora import demo
from trilora.base.load import load_pipeline
from trilora.config import DemoConfig
from trilora.demo import run_demo
from trilora.toy.base import TOY_BASE, toy_base_path
from trilora.toy.evaluate import generate_images, prompt_set, score
from trilora.toy.judge import load_judge
from trilora.toy.world import BASE_STYLES


def test_the_base_is_sd_shaped_fp16_and_under_25_mb():
    pipe = load_pipeline(toy_base_path())
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    files = list(TOY_BASE.rglob("*.safetensors"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) < 25e6
    assert json.loads((TOY_BASE / "quality.json").read_text())["quality"]["prompts"] == 200


@pytest.mark.slow
def test_the_base_draws_what_it_is_asked_for(one_thread):
    """A regression check on 32 other prompts and seeds (the README's figures are on 200: 99-100 %),
    with room for a few images that CPU float noise may flip."""
    pipe = load_pipeline(toy_base_path())
    pipe.set_progress_bar_config(disable=True)
    wanted = prompt_set(32, BASE_STYLES, seed=123)
    result = score(load_judge(), generate_images(pipe, wanted, seed=1000), wanted)
    assert min(result[k] for k in ("style", "colour", "floors", "time")) >= 0.9, result


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, one_thread, capsys, monkeypatch):
    """The demo's whole path on a few steps (make demo runs the full one), on the seed workflow's
    captions: the renders captioned by `trilora caption --model toy` (the same path as the renders'
    own captions, with the captioning step added)."""
    result = run_demo(DemoConfig(output=str(tmp_path), steps=4, captions="toy"))
    out = capsys.readouterr().out
    assert "onion style hit (judge)" in out and str(tmp_path / "before_after.png") in out
    assert "written by `trilora caption --model toy`" in out
    assert (tmp_path / "before_after.png").is_file() and (tmp_path / "run" / "loss.png").is_file()
    scores = json.loads((tmp_path / "metrics.json").read_text())
    assert scores == json.loads(json.dumps(result["scores"]))
    assert set(scores) == {"before", "after", "captions"} and 0 <= scores["after"]["style"] <= 1
    assert scores["captions"]["images"] == 42 and 0 <= scores["captions"]["exactly_right"] <= 42
    # on the toy base, stopping follows the generation signal (the judge on 16 held-out prompts)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_on"] == "generation"
    from trilora.training.metrics import read_metrics

    signals = [
        r["signal"] for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["val_loss"] is not None
    ]
    # style hit x fidelity, each a share of the 16 prompts
    assert len(signals) == 2 and all(abs(s * 256 - round(s * 256)) < 1e-6 for s in signals)
    assert (tmp_path / "run" / "contact-sheet.png").is_file()  # the held-out prompts at every validated step

    # a second demo into the same folder keeps the first and says where it went (the run itself is
    # the one above: only where it goes is checked, with the training and judging left out)
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    went = []
    monkeypatch.setattr(demo, "demo_locked", lambda output, *args: went.append(output) or {})
    run_demo(DemoConfig(output=str(tmp_path), steps=2))
    out = capsys.readouterr().out
    second = tmp_path.with_name(tmp_path.name + "-2")
    assert f"{tmp_path} holds an earlier demo, kept; this one goes to {second}" in out
    assert went == [second] and (second / "settings.toml").is_file()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first
