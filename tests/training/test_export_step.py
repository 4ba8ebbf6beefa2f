"""Every validated step's adapter is kept (--keep-adapters) and `trilora export RUN --step N` writes
any kept one in both layouts, identical to what the run itself exports for that step."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trilora.base.tiny import make_shapes_dataset
from trilora.cli import main

pytestmark = pytest.mark.slow


def train(tmp_path, tiny_model_dir, *extra):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    run = tmp_path / "run"
    args = ["train", "--base", str(tiny_model_dir), "--data", str(data), "--output", str(run), "--resolution", "32",
            "--val-fraction", "0.25", "--rank", "2", "--steps", "6", "--batch-size", "2", "--lr", "0.003",
            "--validate-every", "2", "--val-timesteps", "2", "--stop-on", "val_loss", "--patience", "0", *extra]  # fmt: skip
    assert main(args) == 0
    return run


def test_a_kept_step_exports_as_the_run_exports_it(tmp_path, tiny_model_dir, capsys):
    run = train(tmp_path, tiny_model_dir)
    # the baseline validation's (step 0: the untrained adapter) and every later one's
    assert sorted(p.name for p in (run / "adapters").iterdir()) == [
        f"step-00000{s}.safetensors" for s in (0, 2, 4, 6)
    ]
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best_step"]
    for step in (2, 4, 6):
        assert main(["export", str(run), "--step", str(step)]) == 0
        kohya = run / f"run-step-{step:06d}.safetensors"
        assert (
            kohya.is_file()
            and (run / f"run-step-{step:06d}-diffusers" / "pytorch_lora_weights.safetensors").is_file()
        )
        with safe_open(str(kohya), "pt") as f:
            assert f.metadata()["trilora_best_step"] == str(step)  # says which step it holds
    # the best step's export holds exactly the tensors of the run's own export
    ours, theirs = (
        load_file(str(run / f"run-step-{best:06d}.safetensors")),
        load_file(str(run / "run.safetensors")),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = next(s for s in (2, 4, 6) if s != best)
    differs = load_file(str(run / f"run-step-{other:06d}.safetensors"))
    assert any(not torch.equal(differs[k], theirs[k]) for k in theirs)
    assert set(json.loads((run / "summary.json").read_text())["step_exports"]) == {"2", "4", "6"}


def test_keep_adapters_n_keeps_the_last_n_and_the_best(tmp_path, tiny_model_dir):
    run = train(tmp_path, tiny_model_dir, "--keep-adapters", "1")
    best = json.loads((run / "summary.json").read_text())["best_step"]
    kept = sorted(int(p.name[5:11]) for p in (run / "adapters").iterdir())
    assert kept == sorted({6, best})


@pytest.mark.parametrize("case", ["not a run", "a step not kept", "no step"])
def test_bad_exports_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys, case):
    run = train(tmp_path, tiny_model_dir, "--keep-adapters", "1")
    before = sorted(p.name for p in run.rglob("*"))
    args = {"not a run": ["export", str(tmp_path / "data"), "--step", "2"],
            "a step not kept": ["export", str(run), "--step", "3"], "no step": ["export", str(run)]}[case]  # fmt: skip
    if case == "no step":
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2
    else:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("trilora: error:") and "\n" not in err
    assert sorted(p.name for p in run.rglob("*")) == before


def test_keep_adapters_takes_all_or_a_count(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "data").mkdir()
    args = ["train", "--base", str(tiny_model_dir), "--data", str(tmp_path / "data"), "--output", str(tmp_path / "x"),
            "--keep-adapters", "some"]  # fmt: skip
    assert main(args) == 2
    assert "--keep-adapters must be all or a number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_resumed_run_keeps_the_adapters_up_to_its_step(tmp_path, tiny_model_dir):
    """In its own folder, a resume drops the kept adapters of the abandoned continuation; into a new
    folder, it copies those up to the checkpoint, so every step of the new run stays browsable."""
    run = train(tmp_path, tiny_model_dir, "--checkpoint-every", "2", "--keep-checkpoints", "5", "--sample-prompt",
                "a red square")  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    args = ["train", "--resume", str(run / "checkpoints" / "step-000004"), "--output", str(elsewhere),
            "--steps", "6"]  # fmt: skip
    assert main(args) == 0
    assert sorted(int(p.name[5:11]) for p in (elsewhere / "adapters").iterdir()) == [0, 2, 4, 6]
    assert sorted(p.name for p in (elsewhere / "sheet").iterdir()) == sorted(
        p.name for p in (run / "sheet").iterdir()
    )
    copied, original = (
        load_file(str(folder / "adapters" / "step-000002.safetensors")) for folder in (elsewhere, run)
    )
    assert all(torch.equal(copied[k], original[k]) for k in original)
    assert main(["train", "--resume", str(run / "checkpoints" / "step-000002"), "--steps", "2"]) == 0
    assert sorted(int(p.name[5:11]) for p in (run / "adapters").iterdir()) == [0, 2]
    assert sorted(p.name for p in (run / "sheet").glob("step-*")) == ["step-000000.png", "step-000002.png"]
