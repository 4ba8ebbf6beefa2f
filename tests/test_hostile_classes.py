"""The six classes of hostile input of issue 19, through the real CLI: a user's files are never
destroyed or mixed, signals stop a run as Ctrl-C does, resources have bounds, bad input is one
line and exit 2 (never a traceback), and nonsense is refused. Each test changes nothing on disk
that it should not (snapshots before and after)."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from test_hostile import assert_ok, assert_refused, snapshot, train_args
from test_hostile import cli as subprocess_cli

from trilora.base.load import load_base
from trilora.base.tiny import make_shapes_dataset, save_tiny_pipeline

pytestmark = pytest.mark.slow


def cli(*args) -> subprocess.CompletedProcess:
    """`trilora ARGS` in this process: the same main() the command runs, without starting Python and
    torch again for each case (the signal tests, and the fixture's run, use real subprocesses). An
    exception that escapes main() fails the test, as a traceback would."""
    from trilora.cli import main

    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as error:
                code = error.code
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", count=10)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, shapes, tmp_path_factory):
    """A LoRA run of 4 steps whose only checkpoint is the one written before the final export."""
    output = tmp_path_factory.mktemp("finished") / "run"
    assert_ok(subprocess_cli(*train_args(tiny_model_dir, shapes, output, "--method", "lora", "--rank", "2", "--steps", "4",
                              "--lr", "0.05", "--checkpoint-every", "0", "--name", "style")))  # fmt: skip
    return output


# 1. A user's files destroyed or mixed


def test_a_caption_never_replaces_an_image_or_a_foreign_file(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    before = snapshot(data)
    for extension in (".png", ".PNG", ".jpeg", ".webp", ".safetensors", ".toml", "txt", "/x", ".a.b", "."):
        result = cli("caption", data, "--model", "toy", "--overwrite", "--caption-extension", extension)
        assert_refused(result, "--caption-extension")
    image = sorted(data.glob("*.png"))[0]
    image.with_suffix(".cap").write_bytes(b"\x00\x01binary")  # not a caption: a foreign file
    assert_refused(cli("caption", data, "--model", "toy", "--overwrite", "--caption-extension", ".cap"),
                   str(image.with_suffix(".cap")), "not written by this command")  # fmt: skip
    image.with_suffix(".cap").unlink()
    assert snapshot(data) == before


@pytest.mark.parametrize(
    "name", ["../other/other", "/abs/x", "a/b", "..", ".hidden", "x" * 220, "a\nb", "c:d"]
)
def test_a_name_is_a_file_name_never_a_path(tiny_model_dir, shapes, tmp_path, name):
    result = cli(*train_args(tiny_model_dir, shapes, tmp_path / "run", "--steps", "1", "--name", name))
    assert_refused(result, "--name", "a name is a file name")
    assert not (tmp_path / "run").exists() and not (tmp_path / "other").exists()


def test_generate_never_writes_into_a_run_or_over_a_foreign_file(tiny_model_dir, finished, tmp_path):
    run_before = snapshot(finished)
    base = ["generate", "--base", tiny_model_dir, "--prompt", "a red circle", "--steps", "2", "--height", "32",
            "--width", "32"]  # fmt: skip
    assert_refused(cli(*base, "--output", finished), "the folder of another trilora run")
    assert_refused(cli(*base, "--output", finished / "best" / "x.png"), "another trilora run")
    foreign = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8), "blue").save(foreign)
    foreign_bytes = foreign.read_bytes()
    assert_refused(cli(*base, "--output", foreign), str(foreign), "not written by this command")
    assert foreign.read_bytes() == foreign_bytes
    assert_refused(cli(*base, "--output", tmp_path / "x.jpg"), "writes PNG")
    assert_refused(cli(*base, "--num-images", "2", "--output", tmp_path / "one.png"), "give a folder")
    assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "one.png").exists()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "settings.toml").write_text("my own notes\n")
    assert_refused(cli(*base, "--output", folder), "settings.toml", "not written by this command")
    assert (folder / "settings.toml").read_text() == "my own notes\n"
    assert snapshot(finished) == run_before
    ours = tmp_path / "ours.png"
    assert_ok(cli(*base, "--output", ours))
    assert_ok(cli(*base, "--output", ours))  # its own image is replaced: a rerun works


def test_evaluate_and_train_outputs_never_overlap_their_inputs(tiny_model_dir, shapes, finished, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(shapes, reference)
    before = snapshot(reference)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    evaluate = ["evaluate", "--base", tiny_model_dir, "--lora", finished / "style.safetensors", "--prompts", prompts,
                "--reference", reference, "--steps", "2"]  # fmt: skip
    assert_refused(cli(*evaluate, "--output", reference), "--output", "--reference")
    assert_refused(
        cli(*evaluate, "--output", tmp_path / "report", "--cache", reference), "--cache", "--reference"
    )
    assert_refused(cli(*evaluate, "--output", reference / "report"), "is inside --reference")
    assert_refused(cli(*evaluate, "--output", tmp_path), "holds --reference")
    assert snapshot(reference) == before and not (tmp_path / "report").exists()
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    data_before = snapshot(data)
    assert_refused(cli(*train_args(tiny_model_dir, data, data / "run", "--steps", "1")), "is inside --data")
    assert_refused(cli(*train_args(tiny_model_dir, data, data, "--steps", "1")), "--output", "--data")
    assert_refused(cli(*train_args(tiny_model_dir, data, tmp_path / "r", "--steps", "1", "--val-data", data)),
                   "--val-data", "separate folders")  # fmt: skip
    config = tmp_path / "subsets.toml"
    config.write_text(f'[[subsets]]\nfolder = "{data}"\n')
    assert_refused(cli(*train_args(tiny_model_dir, data, tmp_path / "r", "--steps", "1", "--dataset-config", config)),
                   "--data and --dataset-config")  # fmt: skip
    inner = tmp_path / "inner.toml"
    inner.write_text('[[subsets]]\nfolder = "data"\n')
    result = cli(
        "train", "--base", tiny_model_dir, "--dataset-config", inner, "--output", data / "x", "--steps", "1"
    )
    assert_refused(result, "--dataset-config folder 1")
    assert_refused(
        cli(*train_args(tiny_model_dir, shapes, finished / "nested", "--steps", "1")), "another trilora run"
    )
    assert snapshot(data) == data_before and not (tmp_path / "r").exists()


# 3. Signals and kills


def test_ctrl_c_sigterm_and_sighup_are_one_stop_request_and_the_handlers_are_put_back():
    """Each signal a terminal, SLURM or Kubernetes sends asks the loop to stop after its step (the
    end-to-end run below sends SIGTERM; Ctrl-C has its own in test_resume.py)."""
    from trilora.training.checkpoint import StopRequest

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for signum in before:
        with StopRequest() as stop:
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
            assert stop.requested and stop.signum == signum, signal.Signals(signum).name
            assert signal.getsignal(signum) == before[signum]  # a second signal acts at once
        assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_checkpoints_like_ctrl_c(tiny_model_dir, shapes, tmp_path):
    signum = signal.SIGTERM
    output = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "trilora", *map(str, train_args(
        tiny_model_dir, shapes, output, "--steps", "100000", "--validate-every", "100000",
        "--checkpoint-every", "0"))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while (
        not (output / "metrics.csv").is_file() or len((output / "metrics.csv").read_text().splitlines()) < 4
    ):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step" in stderr and f"--resume {output}" in stderr
    saved = [int(p.name.removeprefix("step-")) for p in (output / "checkpoints").iterdir()]
    assert len(saved) == 1
    assert_refused(
        subprocess_cli("train", "--resume", output, "--steps", str(saved[0] - 1)), "nothing would be trained"
    )
    assert_ok(subprocess_cli("train", "--resume", output, "--steps", str(saved[0] + 1)))


def test_generate_loads_the_runs_own_adapter_files_as_the_export(tiny_model_dir, finished, tmp_path):
    """best/adapter.safetensors (our checkpoint of the factors) gives the image its kohya export gives."""
    common = ["generate", "--base", tiny_model_dir, "--prompt", "a red circle", "--steps", "3", "--height", "32",
              "--width", "32", "--seed", "3"]  # fmt: skip
    images = {}
    for label, path in (("best", finished / "best" / "adapter.safetensors"), ("last", finished / "last" /
                        "adapter.safetensors"), ("kohya", finished / "style.safetensors")):  # fmt: skip
        assert_ok(cli(*common, "--lora", f"{path}:1.5", "--output", tmp_path / f"{label}.png"))
        images[label] = torch.tensor(
            list(Image.open(tmp_path / f"{label}.png").getdata()), dtype=torch.float32
        )
    assert_ok(cli(*common, "--output", tmp_path / "base.png"))
    base = torch.tensor(list(Image.open(tmp_path / "base.png").getdata()), dtype=torch.float32)
    exported = json.loads((finished / "summary.json").read_text())["exported_step"]
    same = "best" if exported == json.loads((finished / "summary.json").read_text())["best_step"] else "last"
    assert (images[same] - images["kohya"]).abs().max() <= 2  # fp16 export against fp32 factors
    assert (images["kohya"] - base).abs().max() > 2  # the adapter does change the image


def test_the_final_state_is_always_resumable(finished):
    steps = sorted(p.name for p in (finished / "checkpoints").iterdir())
    assert steps == ["step-000004"]  # --checkpoint-every 0, yet the end is saved before the exports


# 4. Resources without bounds


@pytest.mark.parametrize("flags, words", [
    (["--resolution", "100000"], ["--resolution must be at most 4096"]),
    (["--val-timesteps", "100000"], ["--val-timesteps must be at most 1000"]),
    (["--sample-steps", "100000", "--sample-prompt", "x"], ["--sample-steps must be at most 1000"]),
    (["--rank", "1000000000", "--dry-run"], ["--rank must be at most 1024"]),
    (["--batch-size", "99999999"], ["--batch-size must be at most"]),
    (["--lr", "1e400"], ["--lr must be a finite number"]),
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--min-delta=-inf"], ["--min-delta must be a finite number"]),
    (["--seed=-1"], ["--seed must be at least 0"]),
])  # fmt: skip
def test_absurd_settings_are_refused_before_any_work(tiny_model_dir, shapes, tmp_path, flags, words):
    assert_refused(cli(*train_args(tiny_model_dir, shapes, tmp_path / "run", "--steps", "1", *flags)), *words)
    assert not (tmp_path / "run").exists()


def test_huge_repeats_and_unreadable_files_are_refused(tiny_model_dir, shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data / "100000000_x")
    assert_refused(
        cli(*train_args(tiny_model_dir, data, tmp_path / "run", "--steps", "1")), "100000000 repeats"
    )
    config = tmp_path / "subsets.toml"
    config.write_text(f'[[subsets]]\nfolder = "{shapes}"\nrepeats = 100000000\n')
    result = cli("train", "--base", tiny_model_dir, "--dataset-config", config, "--output", tmp_path / "run")
    assert_refused(result, "repeats must be a whole number in 1..10000")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert_refused(cli("train", "--config", fifo), "not a regular file")
    assert_refused(cli("inspect", fifo), "not a regular file")
    assert_refused(cli("generate", "--base", tiny_model_dir, "--lora", fifo, "--prompt", "x", "--output",
                       tmp_path / "x.png"), "not a regular file")  # fmt: skip
    assert_refused(cli("train", "--config", "/dev/zero"), "not a regular file")
    big = tmp_path / "big.toml"
    with open(big, "wb") as file:
        file.truncate(64 << 20)  # sparse: no disk used
    assert_refused(cli("train", "--config", big), "MiB")
    assert not (tmp_path / "run").exists()  # no run (nor lock) left behind to block a retry


def test_a_251_byte_file_name_is_written_atomically(tmp_path):
    """The temporary file of an atomic write keeps its name under the file system's limit."""
    from trilora.files import write_text

    long = tmp_path / ("n" * 251 + ".txt")
    write_text(long, "x")
    assert long.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [long.name]


# 5. Tracebacks for bad input


def test_bad_files_and_folders_are_one_line(tiny_model_dir, shapes, lora_file, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("adapter = 5\n")
    assert_refused(cli("train", "--config", toml, "--rank", "4"), "[adapter] must be a table")
    config = tmp_path / "subsets.toml"
    config.write_text("subsets = [1, 2]\n")
    result = cli("train", "--base", tiny_model_dir, "--dataset-config", config, "--output", tmp_path / "run")
    assert_refused(result, "subset 1", "must be a [[subsets]] table")
    result = cli("train", "--base", tiny_model_dir, "--dataset-config", shapes, "--output", tmp_path / "run")
    assert_refused(result, "is a folder")
    empty = tmp_path / "empty.safetensors"
    from safetensors.torch import save_file

    save_file({}, str(empty))
    generate = ["generate", "--base", tiny_model_dir, "--prompt", "x", "--steps", "2", "--output"]
    assert_refused(cli(*generate, tmp_path / "a.png", "--lora", empty), "no tensors")
    other = tmp_path / "sdxl.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(4, 2)}, str(other))  # fmt: skip
    assert_refused(cli(*generate, tmp_path / "b.png", "--lora", other), "cannot load adapter", str(other))
    assert_refused(
        cli(*generate, tmp_path / "c.png", "--seed", "18446744073709551616"), "--seed must be at most"
    )
    assert_refused(cli("ui", "--root", lora_file), "is a file")
    assert not list(tmp_path.glob("*.png"))


# 6. Nonsense accepted


@pytest.mark.parametrize("strength", ["1e400", "nan", "-1e38", "inf", "11"])
def test_non_finite_or_absurd_strengths_are_refused(tiny_model_dir, lora_file, tmp_path, strength):
    result = cli("generate", "--base", tiny_model_dir, "--prompt", "x", "--lora", f"{lora_file}:{strength}",
                 "--output", tmp_path / "x.png")  # fmt: skip
    assert_refused(result, "strength")
    assert not (tmp_path / "x.png").exists()


def test_adapters_with_non_finite_weights_or_absurd_alpha_are_refused(tiny_model_dir, lora_file, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lora_file))
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    alpha = down.replace("lora_down.weight", "alpha")
    for label, change in (
        ("nan", {down: tensors[down] * float("nan")}),
        ("alpha", {alpha: torch.tensor(1e30)}),
    ):
        bad = tmp_path / f"{label}.safetensors"
        save_file(tensors | change, str(bad))
        result = cli("generate", "--base", tiny_model_dir, "--prompt", "x", "--lora", bad, "--output",
                     tmp_path / f"{label}.png")  # fmt: skip
        assert_refused(result, str(bad))
    assert not list(tmp_path.glob("*.png"))


def test_a_wrong_value_in_a_config_file_is_refused_though_a_flag_overrides_it(
    tiny_model_dir, shapes, tmp_path
):
    toml = tmp_path / "run.toml"
    toml.write_text('[adapter]\nrank = "sixteen"\n')
    result = cli(*train_args(tiny_model_dir, shapes, tmp_path / "run", "--steps", "1", "--rank", "4"),
                 "--config", toml)  # fmt: skip
    assert_refused(result, str(toml), "adapter.rank")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error, code, words", [
    (KeyboardInterrupt(), 130, "interrupted before anything was finished"),
    ("SIGTERM", 143, "stopped by SIGTERM before anything was finished"),
])  # fmt: skip
def test_an_interrupt_outside_the_loop_says_what_happened(monkeypatch, capsys, error, code, words):
    from trilora import cli as trilora_cli
    from trilora.errors import Stopped

    error = Stopped(signal.SIGTERM) if error == "SIGTERM" else error

    def interrupted(_args):
        raise error

    monkeypatch.setattr(trilora_cli, "cmd_inspect", interrupted)
    assert trilora_cli.main(["inspect", "x"]) == code
    assert words in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder, whatever its permissions")
def test_an_unreadable_subfolder_is_named(tiny_model_dir, shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data / "locked")
    (data / "locked").chmod(0)
    try:
        assert_refused(cli("check-data", data), "cannot read the folder", "locked")
    finally:
        (data / "locked").chmod(0o755)


def test_models_of_the_wrong_kind_and_lengths_beyond_them(tiny_model_dir, shapes, tmp_path):
    from trilora.captioning.tiny import save_tiny_blip

    blip = save_tiny_blip(tmp_path / "blip")
    result = cli(*train_args(tiny_model_dir, shapes, tmp_path / "run", "--steps", "1", "--stop-on", "generation",
                             "--clip-model", blip))  # fmt: skip
    assert_refused(result, "not CLIP", "model_type")
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    for caption in data.glob("*.txt"):
        caption.unlink()
    assert_refused(cli("caption", data, "--model", blip, "--max-length", "512"), "text positions")
    assert_refused(cli("caption", data, "--model", blip, "--max-length", "6", "--min-length", "1", "--text",
                       "a photo of a very long and winding caption prefix"), "--text is")  # fmt: skip
    assert not list(data.glob("*.txt"))
    assert_refused(cli("bench", "toy", "--base", tiny_model_dir, "--output", tmp_path / "bench"),
                   "not a toy-world base model")  # fmt: skip
    assert not (tmp_path / "bench").exists()


def test_compare_checks_its_references_before_training(tiny_model_dir, shapes, tmp_path):
    result = cli("compare", "--base", tiny_model_dir, "--data", shapes, "--reference", tmp_path / "nowhere",
                 "--output", tmp_path / "report", "--train-steps", "2", "--resolution", "32")  # fmt: skip
    assert_refused(result, "reference folder not found")
    assert not (tmp_path / "report" / "train").exists()


def test_a_config_json_edited_since_the_checkpoint_is_refused_on_resume(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    config = json.loads((run / "config.json").read_text())
    config["adapter"]["rank"] = 64
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    assert_refused(cli("train", "--resume", run, "--steps", "8"), "config.json was edited", "adapter.rank")
    assert snapshot(run) == before


def test_an_unreadable_subfolder_is_an_error_naming_it(monkeypatch, tmp_path):
    """As root every folder is readable, so the walk is given the error a user's locked folder gives."""
    from trilora.data import folder as data_folder
    from trilora.errors import UserError

    real_walk = data_folder.os.walk

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "locked")))
        yield from real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr(data_folder.os, "walk", walk)
    with pytest.raises(UserError, match="cannot read the folder .*locked: Permission denied"):
        data_folder.files_under(tmp_path)


def test_a_folder_of_someone_elses_files_is_never_a_run_folder(tiny_model_dir, shapes, lora_file, tmp_path):
    """--output at a shared folder of models: refused, even with --overwrite (which would delete every
    .safetensors in a run folder); a folder trilora never claimed must be new or empty."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(lora_file, models / "someone.safetensors")
    (models / "config.json").write_text('{"mine": true}')
    before = snapshot(models)
    for extra in ([], ["--overwrite"]):
        assert_refused(cli(*train_args(tiny_model_dir, shapes, models, "--steps", "1", *extra)),
                       "holds files that no trilora command wrote", "someone.safetensors")  # fmt: skip
    assert_refused(cli("demo", "--output", models, "--overwrite"), "no trilora command wrote")
    assert snapshot(models) == before


def test_settings_files_nested_beyond_reason_are_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert_refused(cli("train", "--config", deep), "nests deeper")
    deep_toml = tmp_path / "deep.toml"
    deep_toml.write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    assert_refused(cli("train", "--config", deep_toml))


def test_a_kill_during_the_first_export_leaves_a_run_to_resume(tiny_model_dir, shapes, tmp_path):
    """SIGKILL in the final export of a run that had no checkpoint: the end's checkpoint came first."""
    from test_hostile import KILL_DURING_KOHYA_EXPORT

    script = tmp_path / "killer.py"
    script.write_text(KILL_DURING_KOHYA_EXPORT)
    output = tmp_path / "run"  # the script kills the process inside the export of `run.safetensors`
    killed = subprocess.run([sys.executable, script, *map(str, train_args(tiny_model_dir, shapes, output, "--steps",
                            "3", "--checkpoint-every", "0"))], capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (output / "checkpoints").iterdir()] == ["step-000003"]
    assert_ok(
        subprocess_cli("train", "--resume", output, "--steps", "3")
    )  # finishes: exports what it trained
    assert (output / "run.safetensors").is_file() and json.loads((output / "summary.json").read_text())[
        "steps_run"
    ] == 3


def test_a_black_image_is_reported_and_not_saved(tiny_model_dir, tmp_path, monkeypatch):
    from trilora.inference import generate as generating

    real = generating.generate
    monkeypatch.setattr(generating, "generate", lambda *a: [image.point(lambda _: 0) for image in real(*a)])
    result = cli("generate", "--base", tiny_model_dir, "--prompt", "x", "--steps", "2", "--height", "32", "--width",
                 "32", "--output", tmp_path / "black.png")  # fmt: skip
    assert_refused(result, "came out black", "nothing was saved")
    assert not (tmp_path / "black.png").exists()


def test_a_long_legal_file_name_is_captioned_with_the_others(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    for caption in data.glob("*.txt"):
        caption.unlink()
    first = sorted(data.glob("*.png"))[0]
    first.rename(data / ("n" * 247 + ".png"))  # 251 bytes; the caption's name 251 too
    assert_ok(cli("caption", data, "--model", "toy"))
    assert len(list(data.glob("*.txt"))) == len(list(data.glob("*.png")))
    assert_refused(cli("ui", "--root", "/proc/trilora-ui"), "/proc/trilora-ui")


def test_a_run_far_beyond_the_machines_memory_is_refused_with_a_way_through(tiny_model_dir, shapes, tmp_path):
    result = cli(*train_args(tiny_model_dir, shapes, tmp_path / "run", "--steps", "1", "--resolution", "4096",
                             "--batch-size", "1024"))  # fmt: skip
    assert_refused(result, "GiB", "--gradient-checkpointing", "TRILORA_SKIP_MEMORY_CHECK=1")
    assert not (tmp_path / "run").exists()


def test_a_cache_is_an_evaluations_cache_or_new(tiny_model_dir, shapes, lora_file, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(shapes, photos)
    before = snapshot(photos)
    result = cli("evaluate", "--base", tiny_model_dir, "--lora", lora_file, "--prompts", shapes, "--reference",
                 shapes, "--output", tmp_path / "report", "--cache", photos)  # fmt: skip
    assert_refused(result, "--cache", "not an evaluation's image cache")
    assert snapshot(photos) == before


@pytest.mark.parametrize("case", ["empty data", "sd2 file, prediction unsaid", "zero terminal snr with epsilon",
                                  "a second text encoder's lr off SDXL", "images unreadable"])  # fmt: skip
@pytest.mark.parametrize("output_exists", [False, True])
def test_a_start_refused_in_set_up_leaves_no_folder_and_no_lock(
    tmp_path, tiny_model_dir, case, output_exists
):
    """Bad input found only once set-up reads it (the run folder is already claimed by then): one
    line, exit 2, and the output folder as it was: absent, or empty without a .trilora.lock."""
    from trilora.families.registry import FAMILIES
    from trilora.formats.ldm import save_single_file

    data = make_shapes_dataset(tmp_path / "data", count=4)
    base, extra = str(tiny_model_dir), []
    if case == "empty data":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "sd2 file, prediction unsaid":
        sd2 = save_tiny_pipeline(tmp_path / "sd2", family="sd2")
        base = str(
            save_single_file(
                load_base(sd2).pipe, tmp_path / "sd2.safetensors", FAMILIES["sd2"].ldm_state_dict
            )
        )
    elif case == "zero terminal snr with epsilon":
        extra = ["--zero-terminal-snr"]
    elif case == "a second text encoder's lr off SDXL":
        extra = ["--lr-text-encoder-2", "1e-4"]
    else:
        for image in data.glob("*.png"):
            image.write_bytes(b"not a png")
    output = tmp_path / "run"
    if output_exists:
        output.mkdir()
    result = cli(*train_args(base, str(data), str(output), "--steps", "1", *extra))
    assert_refused(result)
    assert (sorted(output.iterdir()) == []) if output_exists else not output.exists()
