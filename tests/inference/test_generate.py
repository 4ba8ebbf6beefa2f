"""`trilora generate`: diffusers' pipeline and loader, the paper's defaults, strength 0 = base model."""

import numpy as np
from PIL import Image

from trilora.cli import main
from trilora.inference.generate import parse_lora


def generate(tiny_model_dir, tmp_path, name, *extra):
    out = tmp_path / f"{name}.png"
    prompt = [] if "--prompt" in extra else ["--prompt", "a red circle"]  # --prompt repeats: a grid's rows
    args = ["generate", "--base", str(tiny_model_dir), *prompt, "--steps", "3",
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


def image(path):
    return np.asarray(Image.open(path)).astype(int)


def test_a_prompt_by_strength_grid_from_one_load_equals_the_single_images(
    tiny_model_dir, lora_file, tmp_path
):
    """Each cell is the image a plain generate makes with that prompt and strength; grid.png shows them
    labelled; settings.toml makes the same grid again."""
    out = tmp_path / "grid"
    common = ["--base", str(tiny_model_dir), "--steps", "2", "--height", "32", "--width", "32"]
    args = ["generate", *common, "--prompt", "a red circle", "--prompt", "a blue square",
            "--lora", f"{lora_file}:0.8", "--strengths", "0,1", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    cells = [f"p{r:02d}-c{c:02d}-00.png" for r in range(2) for c in range(2)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*cells, "grid.png", "settings.toml"])
    for r, prompt in enumerate(["a red circle", "a blue square"]):
        for c, strength in enumerate([0, 0.8]):
            one = tmp_path / f"one-{r}-{c}.png"
            single = [
                "generate",
                *common,
                "--prompt",
                prompt,
                "--lora",
                f"{lora_file}:{strength}",
                "--output",
                str(one),
            ]
            assert main(single) == 0
            assert np.array_equal(image(out / f"p{r:02d}-c{c:02d}-00.png"), image(one)), (prompt, strength)
    assert not np.array_equal(image(out / "p00-c00-00.png"), image(out / "p00-c01-00.png"))
    sheet = Image.open(out / "grid.png")
    assert sheet.width > 2 * 32 and sheet.height > 2 * 32  # two columns, two rows and their labels
    assert (
        main(["generate", "--config", str(out / "settings.toml"), "--output", str(tmp_path / "again")]) == 0
    )
    for name in cells:
        assert np.array_equal(image(out / name), image(tmp_path / "again" / name))


def test_adapters_apart_put_the_base_and_each_adapter_side_by_side(tiny_model_dir, lora_file, tmp_path):
    out = tmp_path / "apart"
    common = [
        "--base",
        str(tiny_model_dir),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
    ]
    args = ["generate", *common, "--lora", f"{lora_file}:1", "--lora", f"{lora_file}:0.3", "--adapters", "apart",
            "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    for c, extra in enumerate([[], ["--lora", f"{lora_file}:1"], ["--lora", f"{lora_file}:0.3"]]):
        assert main(["generate", *common, *extra, "--output", str(tmp_path / f"{c}.png")]) == 0
        assert np.array_equal(image(out / f"p00-c{c:02d}-00.png"), image(tmp_path / f"{c}.png")), c


def test_a_prompt_given_as_one_string_in_toml_still_works_and_grid_refusals(
    tiny_model_dir, lora_file, tmp_path, capsys
):
    toml = tmp_path / "g.toml"
    toml.write_text(f'[model]\nbase = "{tiny_model_dir}"\n[sampling]\nsteps = 2\nheight = 32\nwidth = 32\n'
                    f'[generate]\nprompt = "x"\noutput = "{tmp_path / "one.png"}"\n')  # fmt: skip
    assert main(["generate", "--config", str(toml)]) == 0 and (tmp_path / "one.png").is_file()
    common = ["generate", "--base", str(tiny_model_dir), "--prompt", "x", "--prompt", "y"]
    for extra, message in [
        (["--output", str(tmp_path / "two.png")], "give a folder as --output"),
        (["--strengths", "0,1", "--output", str(tmp_path / "g")], "give --lora FILE too"),
        (
            ["--lora", f"{lora_file}:5", "--strengths", "1,3", "--output", str(tmp_path / "g")],
            "beyond -10..10",
        ),
        (["--prompt", " ", "--output", str(tmp_path / "g")], "no prompt"),
    ]:
        assert main([*common, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "g").exists() and not (tmp_path / "two.png").exists()
