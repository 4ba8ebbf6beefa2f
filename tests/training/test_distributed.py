"""Two processes (gloo on the CPU) give the single-process result for the same global batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from trilora.base.tiny import make_shapes_dataset
from trilora.cli import main
from trilora.training.metrics import read_metrics

pytestmark = pytest.mark.slow


def write_config(folder, tiny_model_dir, data):
    folder.mkdir(parents=True, exist_ok=True)
    toml = folder / "run.toml"
    toml.write_text(
        f'output = "{folder / "run"}"\n[model]\nbase = "{tiny_model_dir}"\n'
        f'[data]\ndata = "{data}"\nresolution = 32\nval_fraction = 0.2\n'
        f'[adapter]\nmethod = "trilora"\nrank = 4\n'
        f"[train]\nlr = 0.003\nbatch_size = 4\ngrad_accum = 2\nsteps = 5\n"
        f"[validation]\nvalidate_every = 2\nval_timesteps = 2\npatience = 0\n"
        f'[export]\nexport = "last"\nexport_dtype = "fp32"\n'
    )
    return toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, tiny_model_dir):
    data = make_shapes_dataset(tmp_path / "data", count=11)  # 9 train images: the last batch is uneven
    assert main(["train", "--config", str(write_config(tmp_path / "one", tiny_model_dir, data))]) == 0

    toml = write_config(tmp_path / "two", tiny_model_dir, data)
    port = str(free_port())
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "trilora", "train", "--config", str(toml)],
            env=os.environ
            | {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": "2",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "OMP_NUM_THREADS": "1",
            },  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]

    one = load_file(str(tmp_path / "one" / "run" / "last" / "adapter.safetensors"))
    two = load_file(str(tmp_path / "two" / "run" / "last" / "adapter.safetensors"))
    assert one.keys() == two.keys()
    # Sums in another order differ in the last bits, and Adam divides by sqrt(v): where a gradient is
    # near zero that shows as a few 1e-5. One AdamW step moves a weight by up to lr = 3e-3.
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=1e-3)
    assert any(v.abs().sum() > 0 for k, v in one.items() if k.endswith(".down"))  # it trained
    # The same global loss at every step (a process training on the whole batch would double it;
    # Adam, being scale-invariant, would hide that in the weights), written once, by rank 0.
    rows_one, rows_two = (
        read_metrics(tmp_path / "one" / "run" / "metrics.csv"),
        read_metrics(tmp_path / "two" / "run" / "metrics.csv"),
    )
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == list(range(6))
    for a, b in zip(rows_one[1:], rows_two[1:], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
