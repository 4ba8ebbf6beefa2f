"""One placement plan (trilora/training/placement.py): what it decides, that set-up follows it, and
that the --dry-run estimator counts the same models in the same dtypes."""

import pytest
import torch

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.training.memory import estimate_memory, meta_models
from trilora.training.placement import estimated_placement, placement
from trilora.training.setup import setup

FP32, BF16 = torch.float32, torch.bfloat16


def run_config(tmp_path, base, folder=None, **sections):
    settings = {"output": str(tmp_path / "run"), "model": {"base": str(base)},
                "data": {"data": str(folder or tmp_path), "resolution": 32, "val_fraction": 0.25}}  # fmt: skip
    for section, values in sections.items():
        settings[section] = settings.get(section, {}) | values
    return from_dict(settings)


@pytest.mark.parametrize("sections, device, draws, expected", [
    ({}, "cuda", False, (BF16, BF16, False, None, None)),
    ({}, "cpu", False, (None, FP32, False, None, None)),
    ({"train": {"mixed_precision": "bf16"}}, "cpu", False, (BF16, BF16, False, None, None)),
    ({"train": {"mixed_precision": "no"}}, "cuda", True, (None, FP32, False, FP32, FP32)),
    ({"adapter": {"train_text_encoder": True}}, "cuda", False, (BF16, BF16, True, BF16, None)),
    ({"data": {"caption_dropout": 0.1}}, "cuda", False, (BF16, BF16, True, FP32, None)),
    ({}, "cuda", True, (BF16, BF16, False, FP32, FP32)),
])  # fmt: skip
def test_the_plan(tmp_path, sections, device, draws, expected):
    plan = placement(run_config(tmp_path, "x", **sections), device, draws)
    assert (plan.autocast, plan.weight_dtype, plan.captions_per_step, plan.text_encoder, plan.vae) == expected


def test_the_estimator_counts_what_the_plan_places(tmp_path, tiny_model_dir):
    for sections, what in [
        ({}, "UNet bf16"),
        ({"validation": {"clip_model": "clip"}}, "UNet bf16 + text encoder fp32 + VAE fp32"),  # the signal draws
        ({"adapter": {"train_text_encoder": True}}, "UNet bf16 + text encoder bf16"),
        ({"train": {"device": "cpu"}, "validation": {"sample_prompt": ["a"]}}, "UNet fp32 + text encoder fp32 + VAE fp32"),
    ]:  # fmt: skip
        config = run_config(tmp_path, tiny_model_dir, **sections)
        meta = meta_models(config)
        assert estimate_memory(meta, config).base_weights_what == what
        assert meta.unet.dtype == estimated_placement(config).weight_dtype


def test_set_up_follows_the_plan(tmp_path, tiny_model_dir):
    data = make_shapes_dataset(tmp_path / "data", count=6)
    for sections in [{"train": {"mixed_precision": "bf16"}, "adapter": {"train_text_encoder": True}},
                     {"data": {"shuffle_captions": True}}, {}]:  # fmt: skip
        config = run_config(tmp_path, tiny_model_dir, data, **sections)
        s = setup(config)
        plan = placement(config, "cpu", draws_images=False)
        assert s.autocast == plan.autocast and s.pipe.unet.dtype == plan.weight_dtype
        assert (s.train_condition is None) == plan.captions_per_step
        if plan.text_encoder is not None:
            assert s.pipe.text_encoder.dtype == plan.text_encoder
