"""`trilora compare`: both methods trained alike on the same data, evaluated in one report."""

import json

import pytest

from trilora.base.tiny import make_shapes_dataset
from trilora.cli import main


def compare_args(tiny_model_dir, data, inception_file, clip_dir, output):
    return ["compare", "--base", str(tiny_model_dir), "--data", str(data), "--methods", "lora,trilora",
            "--rank", "4", "--train-steps", "4", "--lr", "2e-3", "--train-batch-size", "4", "--resolution", "32",
            "--strengths", "1", "--steps", "2", "--inception-weights", str(inception_file),
            "--clip-model", str(clip_dir), "--kid-subsets", "5", "--output", str(output)]  # fmt: skip


@pytest.mark.slow
def test_compare_trains_each_method_alike_and_writes_one_report(
    tiny_model_dir, inception_file, clip_dir, tmp_path
):
    data = make_shapes_dataset(tmp_path / "data", count=6, seed=4)
    (tmp_path / "train.toml").write_text("[validation]\nvalidate_every = 2\nval_timesteps = 2\n")
    args = compare_args(tiny_model_dir, data, inception_file, clip_dir, tmp_path / "out")
    assert main([*args, "--config", str(tmp_path / "train.toml")]) == 0

    configs = {
        m: json.loads((tmp_path / "out" / "train" / m / "config.json").read_text())
        for m in ("lora", "trilora")
    }
    assert (
        configs["lora"]["adapter"].pop("method") == "lora"
        and configs["trilora"]["adapter"].pop("method") == "trilora"
    )
    assert configs["lora"].pop("output").endswith("lora") and configs["trilora"].pop("output").endswith(
        "trilora"
    )
    configs["lora"]["export"].pop("name"), configs["trilora"]["export"].pop("name")
    assert configs["lora"] == configs["trilora"]  # same settings and seed, apart from the method
    assert configs["lora"]["validation"]["validate_every"] == 2 and configs["lora"]["train"]["steps"] == 4

    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [(r["label"], r["strength"]) for r in results["rows"]] == [
        ("base model", 0.0),
        ("lora", 1.0),
        ("trilora", 1.0),
    ]
    assert results["reference"]["images"] == 6 and results["prompts"] == 6  # the training images and captions
    assert all(row["images"] == 6 for row in results["rows"])  # repeated captions get more images, not copies
    assert set(results["training"]) == {"lora", "trilora"} and set(results["recommended"]) == {
        "lora",
        "trilora",
    }
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Training" in report and report.count("<h3>") == 2  # one image grid per method

    # a second run refuses to replace the report unless told; told, it reuses both trained adapters
    # and every cached image
    report_bytes = (tmp_path / "out" / "metrics.json").read_bytes()
    assert main([*args, "--config", str(tmp_path / "train.toml")]) == 2
    assert (tmp_path / "out" / "metrics.json").read_bytes() == report_bytes
    assert main([*args, "--config", str(tmp_path / "train.toml"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["generated"] == 0
    # the saved settings.toml is the whole comparison: rerun from it, both trainings are reused
    exported = {m: (tmp_path / "out" / "train" / m / f"{m}.safetensors").stat().st_mtime_ns for m in configs}
    assert main(["compare", "--config", str(tmp_path / "out" / "settings.toml"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["generated"] == 0
    assert {
        m: (tmp_path / "out" / "train" / m / f"{m}.safetensors").stat().st_mtime_ns for m in configs
    } == exported
    # ... and refuses to mix runs trained with other settings (here: without train.toml)
    for name in ("metrics.json", "metrics.csv", "report.html"):
        (tmp_path / "out" / name).unlink()
    assert main([*args]) == 2
    assert json.loads((tmp_path / "out" / "train" / "lora" / "config.json").read_text()) == {
        **configs["lora"], "output": str(tmp_path / "out" / "train" / "lora"),
        "adapter": {**configs["lora"]["adapter"], "method": "lora"},
        "export": {**configs["lora"]["export"], "name": "lora"},
    }  # fmt: skip
