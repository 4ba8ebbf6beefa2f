"""scripts/pretrain_toy_base.py reproduces its weights from the seed, also across an interruption."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--images", "40", "--vae-steps", "3", "--vae-batch", "4", "--unet-steps", "4", "--batch", "4",
         "--eval-prompts", "4", "--save-every", "1e9", "--device", "cpu"]  # fmt: skip


def load_script():
    spec = importlib.util.spec_from_file_location(
        "pretrain_toy_base", ROOT / "scripts" / "pretrain_toy_base.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain(script, folder: Path) -> Path:
    script.main([*SMALL, "--work", str(folder / "work"), "--out", str(folder / "out")])
    return folder / "out"


def weights(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


@pytest.mark.slow
def test_same_seed_same_weights_and_an_interrupted_run_resumes_to_the_same(tmp_path, monkeypatch):
    script = load_script()
    uninterrupted = pretrain(script, tmp_path / "a")
    assert set(weights(uninterrupted)) == {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    quality = json.loads((uninterrupted / "quality.json").read_text())["quality"]
    assert quality["prompts"] == 4 and {"style", "colour", "floors", "time", "fidelity", "fid"} <= set(
        quality
    )

    original, interrupted = script.step_generator, []

    def ctrl_c_at_unet_step_2(seed, stage, step):
        if (stage, step) == ("unet", 2) and not interrupted:
            interrupted.append(step)
            raise KeyboardInterrupt
        return original(seed, stage, step)

    monkeypatch.setattr(script, "step_generator", ctrl_c_at_unet_step_2)
    with pytest.raises(SystemExit) as stopped:
        pretrain(script, tmp_path / "b")
    assert stopped.value.code == 130 and not (tmp_path / "b" / "out").exists()
    resumed = pretrain(script, tmp_path / "b")
    assert weights(resumed) == weights(uninterrupted)
