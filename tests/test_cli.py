"""Bad input gets one line and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from trilora.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_base_model_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "data").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trilora",
            "train",
            "--base",
            str(tmp_path / "nowhere"),
            "--data",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "out"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("trilora: error:")]
    assert len(errors) == 1 and str(tmp_path / "nowhere") in errors[0]


def test_impossible_options_are_refused(capsys, tmp_path):
    common = ["train", "--base", str(tmp_path), "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    code, _, err = run(capsys, *common, "--rank", "0")
    assert code == 2 and "--rank must be at least 1" in err
    code, _, err = run(capsys, *common, "--val-fraction", "1.5")
    assert code == 2 and "--val-fraction" in err


def test_unknown_config_keys_are_named(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('output = "x"\n[adapter]\nrnak = 4\n[tarin]\nlr = 1\n')
    code, _, err = run(capsys, "train", "--config", str(toml))
    assert code == 2 and "adapter.rnak" in err and "tarin" in err


def test_config_file_and_flags_merge(tmp_path):
    from trilora.cli import build_parser, tree_from_args

    toml = tmp_path / "run.toml"
    toml.write_text('output = "out"\n[adapter]\nrank = 8\nmethod = "lora"\n[train]\nlr = 0.5\n')
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(toml),
            "--rank",
            "4",
            "--sample-prompt",
            "a",
            "--sample-prompt",
            "b",
            "--train-text-encoder",
        ]
    )
    cfg = tree_from_args(args)[0].run_config()
    assert (
        cfg.adapter.rank == 4 and cfg.adapter.method == "lora" and cfg.train.lr == 0.5 and cfg.output == "out"
    )
    assert cfg.validation.sample_prompt == ["a", "b"] and cfg.adapter.train_text_encoder


def test_missing_files_in_other_commands(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path / "none.safetensors"))
    assert code == 2 and "none.safetensors" in err
    code, _, err = run(capsys, "generate", "--base", str(tmp_path), "--lora", str(tmp_path / "x.safetensors:0.5"),
                       "--prompt", "p", "--output", str(tmp_path.parent / "o.png"))  # fmt: skip
    assert code == 2 and "x.safetensors" in err


def test_train_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ["--base", "--base-config", "--data", "--val-data", "--val-fraction", "--trigger", "--resolution",
                 "--method", "--rank", "--alpha", "--sigma-init", "--train-text-encoder", "--lr", "--lr-scheduler",
                 "--warmup-steps", "--batch-size", "--grad-accum", "--steps", "--epochs", "--seed",
                 "--gradient-checkpointing", "--validate-every", "--patience", "--min-delta", "--sample-prompt",
                 "--name", "--export", "--config"]:  # fmt: skip
        assert flag in out, flag


def test_readme_option_table_is_current():
    """The README's table is what scripts/options_table.py prints from the config tree."""
    import contextlib
    import io
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(root / "scripts" / "options_table.py"), run_name="__main__")
    readme = (root / "README.md").read_text()
    tables = out.getvalue().strip().split("\n\n")
    assert len(tables) == 2 and all(table in readme for table in tables)
