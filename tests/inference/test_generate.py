"""`trilora generate`: diffusers' pipeline and loader, the paper's defaults, strength 0 = base model."""

import numpy as np
from PIL import Image

from trilora.cli import main
from trilora.inference.generate import parse_lora


def generate(tiny_model_dir, tmp_path, name, *extra):
    out = tmp_path / f"{name}.png"
    args = ["generate", "--base", str(tiny_model_dir), "--prompt", "a red circle", "--steps", "3",
            "--height", "32", "--width", "32", "--output", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return np.asarray(Image.open(out)).astype(int)


def test_strength_zero_is_the_base_model_and_strength_matters(tiny_model_dir, lora_file, tmp_path):
    base = generate(tiny_model_dir, tmp_path, "base")
    zero = generate(tiny_model_dir, tmp_path, "zero", "--lora", f"{lora_file}:0")
    half = generate(tiny_model_dir, tmp_path, "half", "--lora", f"{lora_file}:0.5")
    full = generate(tiny_model_dir, tmp_path, "full", "--lora", str(lora_file))
    assert np.array_equal(zero, base)
    assert np.abs(full - base).mean() > np.abs(half - base).mean() > 0


def test_same_seed_same_image_and_scheduler_choice(tiny_model_dir, tmp_path):
    a = generate(tiny_model_dir, tmp_path, "a", "--seed", "30")
    b = generate(tiny_model_dir, tmp_path, "b", "--seed", "30")
    c = generate(tiny_model_dir, tmp_path, "c", "--seed", "31")
    d = generate(tiny_model_dir, tmp_path, "d", "--seed", "30", "--scheduler", "euler")
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_several_images_go_to_a_folder_with_their_settings(tiny_model_dir, tmp_path):
    """Image k is seed + k (as in `trilora evaluate`); settings.toml reruns the command exactly."""
    args = ["generate", "--base", str(tiny_model_dir), "--prompt", "x", "--steps", "2", "--height", "32",
            "--width", "32", "--num-images", "2", "--seed", "7", "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "settings.toml"]
    second = generate(tiny_model_dir, tmp_path, "second", "--prompt", "x", "--steps", "2", "--seed", "8")
    # a batch of two against a batch of one: other kernel shapes, so float rounding may differ by a level
    batched = np.asarray(Image.open(out / "01.png")).astype(int)
    assert np.abs(batched - second).max() <= 2 and np.abs(batched - second).mean() < 0.1
    assert Image.open(out / "01.png").text["trilora"] == (out / "settings.toml").read_text()

    assert (
        main(["generate", "--config", str(out / "settings.toml"), "--output", str(tmp_path / "again")]) == 0
    )
    for name in ("00.png", "01.png"):
        assert np.array_equal(
            np.asarray(Image.open(out / name)), np.asarray(Image.open(tmp_path / "again" / name))
        )


def test_parse_lora(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert parse_lora(f"{tmp_path}/a.safetensors") == (tmp_path / "a.safetensors", 1.0)
    assert parse_lora(f"{tmp_path}/a.safetensors:0.75") == (tmp_path / "a.safetensors", 0.75)
