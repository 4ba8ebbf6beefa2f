"""EMA: its maths and swap (trilora/training/ema.py), what validation and the export see, and (with
tests/training/test_resume.py, whose runs average) its survival across a resume."""

import torch
from safetensors.torch import load_file

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.training.checkpoint import list_checkpoints, load_checkpoint
from trilora.training.ema import EMA
from trilora.training.loop import train
from trilora.training.metrics import read_metrics


def test_the_average_follows_its_closed_form_and_swaps_in_and_out_exactly():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16))
    start = weight.detach().float().clone()
    ema, decay = EMA([weight], 0.9), 0.9
    expected, values = start.clone(), []
    for _ in range(5):
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        ema.update()
        values.append(weight.detach().float().clone())
        expected = decay * expected + (1 - decay) * values[-1]
    assert ema.shadow[0].dtype == torch.float32  # kept in fp32 beside bf16 weights
    assert torch.allclose(ema.shadow[0], expected, atol=1e-6)
    trained = weight.detach().clone()
    with ema.applied():
        assert torch.equal(
            weight.detach(), expected.to(torch.bfloat16)
        )  # validation and export see the average
    assert torch.equal(weight.detach(), trained)  # and training goes on with its own weights, bit for bit
    restored = EMA([weight], decay)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow[0], ema.shadow[0])  # what a checkpoint carries across a resume


def test_validation_and_export_see_the_average_and_training_does_not(tmp_path, tiny_model_dir):
    """Two runs alike but for --ema: the same training losses bit for bit (the average never feeds
    back), other validation losses (validation sees the average), and the exported adapter is the
    average the last checkpoint holds, not the trained weights."""
    data = make_shapes_dataset(tmp_path / "data", count=8)
    rows = {}
    for name, ema in (("plain", None), ("ema", 0.5)):
        train(from_dict({
            "output": str(tmp_path / name), "model": {"base": str(tiny_model_dir)},
            "data": {"data": str(data), "resolution": 32, "val_fraction": 0.25},
            "adapter": {"method": "lora", "rank": 2}, "train": {"lr": 5e-3, "batch_size": 2, "steps": 4, "ema": ema},
            "validation": {"validate_every": 2, "val_timesteps": 2, "stop_on": "val_loss"},
            "export": {"export": "last", "export_dtype": "fp32"},
        }))  # fmt: skip
        rows[name] = read_metrics(tmp_path / name / "metrics.csv")
    assert [r["train_loss"] for r in rows["plain"]] == [r["train_loss"] for r in rows["ema"]]
    val = {name: [r["val_loss"] for r in rows[name] if r["val_loss"] is not None] for name in rows}
    assert val["plain"][0] == val["ema"][0] and val["plain"][1:] != val["ema"][1:]
    state = load_checkpoint(list_checkpoints(tmp_path / "ema")[-1])
    exported = load_file(str(tmp_path / "ema" / "last" / "adapter.safetensors"))
    averaged = [tensor.float() for tensor in state["ema"]]
    moved = [key for key in exported if not torch.equal(exported[key], state["adapter"][key])]
    assert moved and all(any(torch.equal(exported[key], a) for a in averaged) for key in exported)
