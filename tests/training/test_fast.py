"""The fast path's checks that need no GPU: compiled blocks give eager's losses (inductor on the
CPU, with the system compiler), channels-last too, and the bf16 path trains on the CPU."""

import math
import os
import re
import sys

import pytest
import torch

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.training.loop import train
from trilora.training.metrics import read_metrics


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", count=8)


def losses(tmp_path, tiny_model_dir, shapes, name: str, steps: int = 3, validate: bool = True,
           **train_options) -> list[float]:  # fmt: skip
    config = from_dict({
        "output": str(tmp_path / name), "model": {"base": str(tiny_model_dir)},
        "data": {"data": str(shapes), "resolution": 32, "val_fraction": 0.25 if validate else 0.0},
        "adapter": {"method": "trilora", "rank": 4},
        "train": {"lr": 2e-3, "batch_size": 2, "steps": steps, "seed": 0, "device": "cpu"} | train_options,
        "validation": {"validate_every": steps, "patience": 0, "val_timesteps": 2},
    })  # fmt: skip
    train(config)
    rows = read_metrics(tmp_path / name / "metrics.csv")
    return [r[k] for r in rows for k in ("train_loss", "val_loss") if r[k] is not None]


@pytest.mark.slow  # inductor compiles the tiny UNet's transformer blocks on the CPU (~1 min)
def test_compiled_and_channels_last_steps_match_eager(tmp_path, tiny_model_dir, shapes, caplog):
    # no validation: its no-grad passes would be compiled too, a minute more on 2 cores
    eager = losses(tmp_path, tiny_model_dir, shapes, "eager", validate=False)
    with caplog.at_level("INFO", logger="trilora"):
        fast = losses(
            tmp_path,
            tiny_model_dir,
            shapes,
            "fast",
            validate=False,
            compile=True,
            channels_last=True,
            cuda_graphs=True,  # CUDA only: on the CPU the option is set aside with a warning
        )
    assert re.search(r"[1-9]\d* transformer blocks compiled; channels-last", caplog.text), caplog.text
    assert "--cuda-graphs: CUDA graphs exist on CUDA only" in caplog.text
    # the stated tolerance: fp32 reassociation only
    assert len(eager) == 3 and fast == pytest.approx(eager, rel=1e-4, abs=1e-6)


def test_bf16_path_trains_on_the_cpu(tmp_path, tiny_model_dir, shapes):
    """bf16 autocast and bf16 frozen weights with fp32 adapters: dtype mistakes fail here, not on a GPU."""
    values = losses(tmp_path, tiny_model_dir, shapes, "bf16", steps=12, mixed_precision="bf16")
    assert all(math.isfinite(v) for v in values)
    rows = read_metrics(tmp_path / "bf16" / "metrics.csv")
    val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert len(val) == 2 and val[-1] < val[0]  # it learns
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "bf16" / "last" / "adapter.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {
        torch.float32
    }  # trained in fp32 beside bf16 weights


def test_a_loss_that_stops_being_finite_stops_the_run_saving_nothing_spoilt(
    tmp_path, tiny_model_dir, shapes, monkeypatch
):
    """A diverging run, as an absurd learning rate makes one (the config's bounds refuse such a
    rate now, so the real step's loss is made non-finite from step 2 on)."""
    from trilora.errors import UserError
    from trilora.training import loop

    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda r, state, order, step, lr: real_step(r, state, order, step, lr)
                        * (float("inf") if step >= 2 else 1.0))  # fmt: skip
    with pytest.raises(UserError, match=r"the training loss became (nan|inf) at step \d+; lower --lr"):
        losses(tmp_path, tiny_model_dir, shapes, "diverges", steps=6)
    assert (
        not (tmp_path / "diverges" / "checkpoints").exists() and not (tmp_path / "diverges" / "last").exists()
    )


def test_a_training_step_reads_no_tensor_back_to_the_host(tmp_path, tiny_model_dir, shapes, monkeypatch):
    """Nothing in a step reads a tensor back (item, tolist, cpu, bool, float, ...): on a GPU each read
    stalls the device until the step's kernels have run. The loss reaches the host by the loop's
    readout, once the next step is queued (trilora/training/readout.py)."""
    from trilora.training import loop

    reads, inside = [], [False]
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1)
            # AdamW's foreach path reads its step count on the CPU; on CUDA trilora uses the fused kernel
            if inside[0] and f"torch{os.sep}optim" not in caller.f_code.co_filename:
                reads.append(f"{_name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    step = loop.train_step

    def watched(*args, **kwargs):
        inside[0] = True
        try:
            return step(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(loop, "train_step", watched)
    values = losses(tmp_path, tiny_model_dir, shapes, "watched", steps=3, grad_accum=2, ema=0.9,
                    min_snr_gamma=5.0, noise_offset=0.05)  # fmt: skip
    assert reads == []
    assert len(values) == 3 + 2 and all(math.isfinite(v) for v in values)  # every step's loss was logged


def test_compiled_blocks_get_a_graph_for_every_shape_not_eager_after_eight(monkeypatch):
    """Dynamo's default keeps 8 graphs per function and runs the rest eager, silently: SD 1.5's four
    block widths in training and validation spend that, and each bucket adds four shapes."""
    from diffusers.models.attention import BasicTransformerBlock

    from trilora.training.fast import compile_blocks

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)  # the default, restored after
    graphs = []

    def counting(gm, inputs):  # a backend that only counts: dynamo's limit does not depend on it
        graphs.append(gm)
        return gm.forward

    model = torch.nn.Sequential(*(BasicTransformerBlock(32, 2, 16, cross_attention_dim=24) for _ in range(2)))
    assert compile_blocks(model, backend=counting) == 2
    context = torch.randn(1, 7, 24)
    for tokens in range(4, 52, 4):  # 12 shapes, each through both blocks
        for block in model:
            block(torch.randn(1, tokens, 32), encoder_hidden_states=context)
    torch._dynamo.reset()
    assert len(graphs) == 12  # one per shape, shared by the two blocks


def test_the_log_names_the_attention_kernel_torch_runs():
    from diffusers.models.attention_processor import Attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from trilora.training.fast import attention_backend

    model = torch.nn.Sequential(Attention(query_dim=32, heads=2, dim_head=16))
    cpu = torch.device("cpu")
    assert attention_backend(model, cpu, torch.float32) == "SDPA flash kernel (CPU) for 2 heads of 16"
    with sdpa_kernel(SDPBackend.MATH):
        assert attention_backend(model, cpu, torch.float32) == "SDPA math kernel (CPU) for 2 heads of 16"
    assert attention_backend(torch.nn.Linear(2, 2), cpu, torch.float32) == "none (no attention layers)"
