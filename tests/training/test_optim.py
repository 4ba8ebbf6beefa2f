"""The optimiser choices and gradient clipping."""

import importlib.util

import pytest
import torch

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.errors import UserError
from trilora.training import loop
from trilora.training.optim import make_optimizer


def config(tmp_path, tiny_model_dir, **train):
    return from_dict(
        {
            "output": str(tmp_path / "run"),
            "model": {"base": str(tiny_model_dir)},
            "data": {"data": str(make_shapes_dataset(tmp_path / "data", count=6)), "resolution": 32},
            "adapter": {"method": "trilora", "rank": 2},
            "train": {"lr": 1e-3, "batch_size": 2, "steps": 2, **train},
            "validation": {"validate_every": 2, "val_timesteps": 1},
        }
    )


@pytest.mark.parametrize(("name", "package"), [("adamw8bit", "bitsandbytes"), ("prodigy", "prodigyopt")])
def test_an_optimizer_whose_package_is_missing_says_what_to_install(tmp_path, tiny_model_dir, name, package):
    if importlib.util.find_spec(package):
        pytest.skip(f"{package} is installed here")
    c = config(tmp_path, tiny_model_dir, optimizer=name)
    with pytest.raises(UserError, match=f"pip install {package}"):
        make_optimizer(c, {"unet": torch.nn.Linear(2, 2)}, torch.device("cpu"))


def test_text_encoder_lr_is_a_factor_of_the_schedule(tmp_path, tiny_model_dir):
    c = config(tmp_path, tiny_model_dir, lr_text_encoder=2.5e-4)
    optimizer = make_optimizer(c, {"unet": torch.nn.Linear(2, 2), "text_encoder": torch.nn.Linear(2, 2)},
                               torch.device("cpu"))  # fmt: skip
    assert [g["lr_factor"] for g in optimizer.param_groups] == [1.0, 0.25]


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_max_grad_norm_clips_the_adapter_gradients(tmp_path, tiny_model_dir, monkeypatch, max_grad_norm):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append((max_norm, len(params)))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", recording_clip)
    loop.train(config(tmp_path, tiny_model_dir, max_grad_norm=max_grad_norm))
    if max_grad_norm:
        assert [m for m, _ in calls] == [0.5, 0.5] and all(n > 0 for _, n in calls)
    else:
        assert calls == []
