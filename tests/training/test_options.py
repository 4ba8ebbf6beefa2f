"""The everyday options of kohya/OneTrainer users, together in short real runs on the tiny model."""

import json
import logging

from PIL import Image

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.formats.native import load_adapter
from trilora.training.loop import train


def wide_and_tall(folder, count=8):
    """Shapes images cropped to 2:1 and 1:2, so that buckets matter."""
    make_shapes_dataset(folder, count=count)
    for i, path in enumerate(sorted(folder.glob("*.png"))):
        image = Image.open(path).resize((64, 64))
        (image.crop((0, 16, 64, 48)) if i % 2 else image.crop((16, 0, 48, 64))).save(path)
    return folder


def test_buckets_subsets_captions_class_images_ema_and_disk_cache(tmp_path, tiny_model_dir, caplog):
    wide_and_tall(tmp_path / "style")
    make_shapes_dataset(tmp_path / "val", count=2, seed=5)
    (tmp_path / "dataset.toml").write_text('[[subsets]]\nfolder = "style"\nrepeats = 2\ntrigger = "sks"\n')
    settings = {
        "output": str(tmp_path / "run"),
        "model": {"base": str(tiny_model_dir)},
        "data": {"dataset_config": str(tmp_path / "dataset.toml"), "val_data": str(tmp_path / "val"),
                 "resolution": 32, "shuffle_captions": True, "keep_tokens": 1, "caption_dropout": 0.2,
                 "cache_latents": "disk", "class_data": str(tmp_path / "class"), "class_prompt": "a shape",
                 "num_class_images": 2, "prior_loss_weight": 0.5},
        "adapter": {"method": "lora", "rank": 4, "train_text_encoder": True, "dropout": 0.1},
        "train": {"lr": 1e-3, "lr_text_encoder": 5e-4, "batch_size": 2, "steps": 6, "ema": 0.9,
                  "min_snr_gamma": 5.0, "noise_offset": 0.05, "lr_scheduler": "cosine", "warmup_steps": 2},
        "validation": {"validate_every": 3, "val_timesteps": 2, "patience": 0, "sample_prompt": ["sks, a red circle"],
                       "sample_steps": 2, "sample_every": 2},
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="trilora"):
        summary = train(from_dict(settings))
    out = tmp_path / "run"
    assert sorted(p.name for p in (tmp_path / "class").glob("*.png")) == [
        "class-00000.png",
        "class-00001.png",
    ]
    assert (
        "8 training images" not in caplog.text
        and "10 training images (18 with repeats, 2 class images)" in caplog.text
    )
    assert "buckets (width x height: images)" in caplog.text
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000000", "step-000002", "step-000003", "step-000004", "step-000006"
    ]  # fmt: skip
    state, _ = load_adapter(out / "best" / "adapter.safetensors")
    assert any(k.startswith("text_encoder.") for k in state)
    assert (
        summary["steps_run"] == 6 and json.loads((out / "summary.json").read_text())["best_step"] is not None
    )
    assert len(list((tmp_path / ".latent_cache").glob("*.safetensors"))) == 12  # 8 + 2 class + 2 validation

    # A second run reuses every cached latent (same images, VAE, resolution and buckets).
    caplog.clear()
    settings["output"] = str(tmp_path / "run2")
    with caplog.at_level(logging.INFO, logger="trilora"):
        train(from_dict(settings))
    assert "latent cache: 10 of 10 images cached, encoding 0" in caplog.text
    assert "generating" not in caplog.text  # the class images were kept
