"""`trilora evaluate` end to end on the tiny model: images, cache, metrics files and report."""

import csv
import json
import re

import pytest

from trilora.cli import main
from trilora.evaluation.inception import WEIGHTS_URL

PROMPTS = ["a red circle", "a blue square", "a green circle"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tiny_model_dir, lora_file, reference_dir, inception_file, clip_dir, prompts_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("evaluate") / "out"

    def evaluate(strengths: str, *extra: str) -> dict:
        args = ["evaluate", "--base", str(tiny_model_dir), "--lora", str(lora_file), "--prompts", str(prompts_file),
                "--reference", str(reference_dir), "--strengths", strengths, "--steps", "2", "--num-images", "2",
                "--inception-weights", str(inception_file), "--clip-model", str(clip_dir), "--kid-subsets", "10",
                "--output", str(output), *extra]  # fmt: skip
        assert main(args) == 0
        return json.loads((output / "metrics.json").read_text())

    return output, evaluate, evaluate("0,1")


@pytest.mark.slow
def test_metrics_files_and_report(run):
    output, _, results = run
    assert results["generated"] == 2 * len(PROMPTS) * 2  # base and strength 1; strength 0 is the base model
    rows = results["rows"]
    assert [(r["label"], r["strength"]) for r in rows] == [("base model", 0.0), ("style", 1.0)]
    assert rows[0]["nfid"] == 1.0 and rows[1]["nfid"] == pytest.approx(rows[1]["fid"] / rows[0]["fid"])
    for row in rows:
        assert row["images"] == 6 and row["fid"] > 0 and row["kid_std"] > 0
        assert 0 <= row["clip_score"] <= 100 and row["clip_score"] > 0
    assert results["recommended"]["style"] in (0.0, 1.0)
    assert results["metrics"]["kid_subset_size"] == 3  # half of the 6 images per row
    assert results["protocol"] | {"steps": 20, "num_images": 1} == {
        "seed": 30, "steps": 20, "guidance": 7.5, "num_images": 1, "height": None, "width": None, "scheduler": None,
    }  # fmt: skip
    with (output / "metrics.csv").open() as file:
        table = list(csv.DictReader(file))
    assert [float(r["fid"]) for r in table] == pytest.approx([r["fid"] for r in rows])
    assert sum(r["recommended"] == "True" for r in table) == (results["recommended"]["style"] == 1.0)
    report = (output / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 1  # the plot
    assert report.count("data:image/jpeg;base64,") == len(PROMPTS) * 2  # grid: prompt x (base, strength 1)
    assert 'src="http' not in report and "<link" not in report  # self-contained
    assert all(prompt in report for prompt in PROMPTS) and "recommended" in report


@pytest.mark.slow
def test_rerun_generates_only_what_is_new(run):
    output, evaluate, first = run
    before = {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()}
    with pytest.raises(AssertionError):  # an earlier report is replaced only with --overwrite
        evaluate("0,1")
    assert {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()} == before
    again = evaluate("0,1", "--overwrite")
    assert again["generated"] == 0
    assert again["rows"] == first["rows"]  # the same images give the same numbers
    # settings.toml beside the report is the evaluation: --config reruns it (from the cache)
    saved = (output / "settings.toml").read_text()
    assert "overwrite" not in saved and "strengths = [0.0, 1.0]" in saved
    assert main(["evaluate", "--config", str(output / "settings.toml"), "--overwrite"]) == 0
    rerun = json.loads((output / "metrics.json").read_text())
    assert rerun["generated"] == 0 and rerun["rows"] == first["rows"]
    more = evaluate("0,0.5,1", "--overwrite")
    assert more["generated"] == len(PROMPTS) * 2
    assert [r["strength"] for r in more["rows"]] == [0.0, 0.5, 1.0]
    assert more["rows"][0] == first["rows"][0] and more["rows"][2] == first["rows"][1]
    pngs = list((output / "cache").rglob("*.png"))
    assert len(pngs) == 3 * len(PROMPTS) * 2


@pytest.mark.slow
def test_missing_metric_weights_stop_before_generating(tiny_model_dir, lora_file, reference_dir, clip_dir,
                                                       prompts_file, tmp_path, capsys):  # fmt: skip
    args = ["evaluate", "--base", str(tiny_model_dir), "--lora", str(lora_file), "--prompts", str(prompts_file),
            "--reference", str(reference_dir), "--clip-model", str(clip_dir), "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert re.fullmatch(r"trilora: error: .*--inception-weights.*", message) and WEIGHTS_URL in message
    assert not (tmp_path / "out").exists()


def test_help_lists_the_protocol(capsys):
    for command in ("evaluate", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        for flag in ["--base", "--prompts", "--reference", "--strengths", "--seed", "--steps", "--guidance",
                     "--num-images", "--inception-weights", "--clip-model", "--output"]:  # fmt: skip
            assert flag in out, (command, flag)
    assert "--methods" in out and "--train-steps" in out


def test_bad_inputs_are_one_line_errors(tiny_model_dir, prompts_file, reference_dir, tmp_path, capsys):
    common = ["--base", str(tiny_model_dir), "--prompts", str(prompts_file), "--reference", str(reference_dir),
              "--output", str(tmp_path / "out")]  # fmt: skip
    cases = {
        "adapter file not found": ["--lora", str(tmp_path / "none.safetensors")],
        "--strengths": ["--strengths", "0,full"],
        "at least 2 images": ["--num-images", "1", "--prompts", str(tmp_path / "one.txt")],
    }
    (tmp_path / "one.txt").write_text("a cat\n")
    for expected, extra in cases.items():
        assert main(["evaluate", *common, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err


@pytest.mark.slow
def test_an_sdxl_adapter_is_evaluated(tiny_sdxl_dir, reference_dir, inception_file, clip_dir, prompts_file,
                                      tmp_path):  # fmt: skip
    """SDXL through the same protocol: its pipeline draws (size conditioning included) and every
    metric is computed for the base model and the adapter, whose SGM-named export loads."""
    run = tmp_path / "run"
    train = ["train", "--base", str(tiny_sdxl_dir), "--data", str(reference_dir), "--output", str(run),
             "--resolution", "32", "--steps", "2", "--val-fraction", "0", "--rank", "2"]  # fmt: skip
    assert main(train) == 0
    output = tmp_path / "report"
    args = ["evaluate", "--base", str(tiny_sdxl_dir), "--lora", str(run / "run.safetensors"), "--prompts",
            str(prompts_file), "--reference", str(reference_dir), "--strengths", "0,1", "--steps", "2",
            "--num-images", "1", "--height", "32", "--width", "32", "--inception-weights", str(inception_file),
            "--clip-model", str(clip_dir), "--kid-subsets", "10", "--output", str(output)]  # fmt: skip
    assert main(args) == 0
    results = json.loads((output / "metrics.json").read_text())
    assert results["generated"] == 2 * len(PROMPTS)  # base and strength 1
    assert [r["strength"] for r in results["rows"]] == [0.0, 1.0]
    for row in results["rows"]:
        assert row["images"] == len(PROMPTS) and row["fid"] > 0 and row["clip_score"] > 0
