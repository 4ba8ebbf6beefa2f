"""Exact resume: a run killed at any point and resumed ends bit for bit where the uninterrupted run ends
(EMA included: the runs here average their adapters, so its state must survive the resume too)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from trilora.base.tiny import make_shapes_dataset
from trilora.cli import main

pytestmark = pytest.mark.slow
STEPS = 12


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", count=10)


def write_config(folder, tiny_model_dir, shapes, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    toml = folder / "run.toml"
    toml.write_text(
        f'output = "{folder / "run"}"\n'
        f'[model]\nbase = "{tiny_model_dir}"\n'
        f'[data]\ndata = "{shapes}"\nresolution = 32\nval_fraction = 0.2\n'
        f'[adapter]\nmethod = "trilora"\nrank = 4\ndropout = 0.1\n'
        f'[train]\nlr = 0.003\nbatch_size = 3\ngrad_accum = 2\nsteps = {STEPS}\nlr_scheduler = "cosine"\n'
        f"warmup_steps = 2\nnoise_offset = 0.05\nmin_snr_gamma = 5.0\nema = 0.9\n"
        f"[validation]\nvalidate_every = 3\npatience = 0\nval_timesteps = 2\n"
        f"[checkpoint]\ncheckpoint_every = 2\nkeep_checkpoints = 2\n" + extra.get("more", "")
    )
    return toml


def results(folder):
    run = folder / "run"
    with (run / "metrics.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]
    files = {
        name: load_file(str(run / name))
        for name in ["last/adapter.safetensors", "best/adapter.safetensors", "run.safetensors"]
    }
    return rows, files


def assert_same(a, b):
    rows_a, files_a = a
    rows_b, files_b = b
    assert rows_a == rows_b
    for name in files_a:
        assert files_a[name].keys() == files_b[name].keys(), name
        for key in files_a[name]:
            assert files_a[name][key].equal(files_b[name][key]), (name, key)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, tiny_model_dir, shapes):
    folder = tmp_path_factory.mktemp("uninterrupted")
    process = start(write_config(folder, tiny_model_dir, shapes))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return folder


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return results(uninterrupted_run)


def start(toml=None, resume=None):
    """Every run of this file trains in a child process of its own, so all share one environment
    (thread count above all: CPU reductions differ in the last bit between thread counts)."""
    where = ["--config", str(toml)] if toml else ["--resume", str(resume)]
    return subprocess.Popen(
        [sys.executable, "-m", "trilora", "train", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def resume(run):
    process = start(resume=run)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def test_sigkill_then_resume_is_bit_exact(tmp_path, tiny_model_dir, shapes, uninterrupted):
    toml = write_config(tmp_path, tiny_model_dir, shapes)
    process = start(toml)
    wait_for(tmp_path / "run" / "checkpoints" / "step-000004" / "state.pt", process)
    time.sleep(0.1)  # a moment later: mid-step, mid-validation or mid-write, any point must do
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    resume(tmp_path / "run")
    assert_same(results(tmp_path), uninterrupted)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same(
    tmp_path, tiny_model_dir, shapes, uninterrupted
):
    toml = write_config(tmp_path, tiny_model_dir, shapes)
    process = start(toml)
    wait_for(tmp_path / "run" / "checkpoints" / "step-000002" / "state.pt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    # Stop exports the best adapter so far (the last while no trained step was validated) and says so
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted_by"] == "SIGINT" and summary["exported_step"] >= 2, summary
    assert f"exported the adapter of step {summary['exported_step']}" in err
    assert (
        load_file(summary["exported"]["kohya"])
        and (tmp_path / "run" / "last" / "adapter.safetensors").is_file()
    )
    resume(tmp_path / "run")  # and the export changes nothing of what resume continues
    assert_same(results(tmp_path), uninterrupted)


def test_resume_refuses_changed_settings_and_allows_more_steps(tmp_path, uninterrupted_run, capsys):
    import shutil

    shutil.copytree(uninterrupted_run / "run", tmp_path / "run")
    code = main(["train", "--resume", str(tmp_path / "run"), "--rank", "8", "--method", "lora"])
    err = capsys.readouterr().err
    assert code == 2 and "adapter.rank: 4 -> 8" in err and "adapter.method" in err
    assert main(["train", "--resume", str(tmp_path / "run"), "--output", str(tmp_path / "run"),
                 "--steps", str(STEPS + 2), "--patience", "3"]) == 0  # fmt: skip
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(STEPS + 3))


def test_a_checkpoint_from_before_stop_on_resumes_and_keeps_stopping_on_the_loss(tmp_path, uninterrupted_run):
    import json
    import shutil

    import torch

    shutil.copytree(uninterrupted_run / "run", tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "step-000012" / "state.pt"
    state = torch.load(last, weights_only=True)
    for key in ("stop_on", "signal_prompt", "clip_model"):
        del state["config"]["validation"][key]
    torch.save(state, last)
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", str(STEPS + 1)]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_on"] == "val_loss"


def test_keep_checkpoints_and_no_leftovers(uninterrupted_run):
    from trilora.training.checkpoint import list_checkpoints

    names = [p.name for p in list_checkpoints(uninterrupted_run / "run")]
    assert names == ["step-000010", "step-000012"]
    assert not [p for p in (uninterrupted_run / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_an_unfinished_checkpoint_write_is_ignored(uninterrupted_run, tmp_path):
    import shutil

    from trilora.training.checkpoint import find_checkpoint

    shutil.copytree(uninterrupted_run / "run" / "checkpoints", tmp_path / "checkpoints")
    partial = tmp_path / "checkpoints" / "step-000014.tmp"
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"half a file")
    assert find_checkpoint(tmp_path).name == "step-000012"
