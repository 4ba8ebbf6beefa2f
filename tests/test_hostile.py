"""Hostile input and hostile situations, through the real CLI in subprocesses.

Every bad input gets exit code 2, exactly one `trilora: error:` line that names the problem, no
traceback, and leaves what is already in the output folder byte for byte as it was. Runs never mix:
a second run into a run's folder is refused, two at once are refused, --overwrite replaces, a kill
during an export leaves the previous export loadable, and --resume writes where it is told.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trilora.base.tiny import make_shapes_dataset
from trilora.formats.kohya import read_kohya

pytestmark = pytest.mark.slow


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trilora", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("trilora: error:")]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) and the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", count=10)


def train_args(base, data, output, *extra):
    return ["train", "--base", base, "--data", data, "--output", output, "--resolution", "32",
            "--batch-size", "2", "--val-fraction", "0.2", "--val-timesteps", "2", "--validate-every", "3",
            "--patience", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_model_dir, shapes, tmp_path_factory):
    """A finished run: TriLoRA rank 4, 6 steps, checkpoints at 3 and 6. Copy it before changing it."""
    output = tmp_path_factory.mktemp("finished") / "run"
    args = train_args(tiny_model_dir, shapes, output, "--method", "trilora", "--rank", "4", "--steps", "6",
                      "--checkpoint-every", "3")  # fmt: skip
    assert_ok(cli(*args))
    return output


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_a_second_run_into_a_finished_runs_folder_is_refused(tiny_model_dir, shapes, run_copy):
    before = snapshot(run_copy)
    result = cli(*train_args(tiny_model_dir, shapes, run_copy, "--method", "lora", "--rank", "2", "--steps", "2",
                             "--checkpoint-every", "2"))  # fmt: skip
    assert_refused(result, str(run_copy), "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_copy) == before


BAD_TRAIN_OPTIONS = [
    (["--conv-rank", "0"], "--conv-rank must be at least 1"),
    (["--conv-rank", "-3"], "--conv-rank must be at least 1"),
    (["--conv-alpha", "4"], "--conv-alpha needs --conv-rank"),
    (["--sample-steps", "0", "--sample-prompt", "x"], "--sample-steps must be at least 1"),
    (["--sample-every", "0"], "--sample-every must be at least 1"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--rank", "0"], "--rank must be at least 1"),
    (["--cuda-graphs"], "--cuda-graphs replays compiled blocks: add --compile"),
    (["--resume", "RUN", "--overwrite"], "contradict"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN_OPTIONS, ids=[" ".join(e) for e, _ in BAD_TRAIN_OPTIONS])
def test_impossible_train_options_change_nothing(tiny_model_dir, shapes, run_copy, extra, message):
    before = snapshot(run_copy)
    extra = [str(run_copy) if e == "RUN" else e for e in extra]
    assert_refused(cli(*train_args(tiny_model_dir, shapes, run_copy, "--steps", "2", *extra)), message)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "line, words",
    [('rank = "sixteen"', ["adapter.rank", "an integer", "'sixteen'"]),
     ('method = "dora"', ["adapter.method", "lora, trilora", "'dora'"]),
     ("dropout = true", ["adapter.dropout", "a number", "True"])],
)  # fmt: skip
def test_a_toml_value_of_the_wrong_type_names_key_type_and_value(
    tiny_model_dir, shapes, tmp_path, line, words
):
    toml = tmp_path / "run.toml"
    toml.write_text(f'output = "{tmp_path / "out"}"\n[model]\nbase = "{tiny_model_dir}"\n'
                    f'[data]\ndata = "{shapes}"\n[adapter]\n{line}\n[train]\nlr = 0.001\n')  # fmt: skip
    assert_refused(cli("train", "--config", toml), str(toml), *words)
    toml.write_text(toml.read_text().replace("lr = 0.001", 'lr = "fast"').replace(line, ""))
    assert_refused(cli("train", "--config", toml), "train.lr", "a number", "'fast'")
    assert not (tmp_path / "out").exists()


def test_a_generation_signal_without_a_scorer_is_refused_before_anything_is_written(
    tiny_model_dir, shapes, tmp_path
):
    output = tmp_path / "run"
    result = cli(*train_args(tiny_model_dir, shapes, output, "--steps", "1", "--stop-on", "generation"))
    assert_refused(result, "--stop-on generation needs a scorer", "--clip-model")
    assert not output.exists()  # no run (nor lock) left behind to block a retry


def test_output_paths_that_cannot_be_folders(tiny_model_dir, shapes, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert_refused(cli(*train_args(tiny_model_dir, shapes, a_file, "--steps", "1")), str(a_file), "is a file")
    under = a_file / "run"
    assert_refused(cli(*train_args(tiny_model_dir, shapes, under, "--steps", "1")), "under the file")
    assert a_file.read_text() == "mine"
    assert_refused(
        cli(*train_args(tiny_model_dir, shapes, "/proc/trilora-run", "--steps", "1")), "/proc/trilora-run"
    )


def test_resume_from_a_damaged_or_malicious_checkpoint(tiny_model_dir, shapes, run_copy, tmp_path):
    state = run_copy / "checkpoints" / "step-000006" / "state.pt"
    state.write_bytes(os.urandom(4096))
    before = snapshot(run_copy)
    message = assert_refused(cli("train", "--resume", run_copy), str(state), "not a trilora training state")
    assert "weights_only" not in message  # torch's advice to unpickle untrusted files is not repeated
    marker = tmp_path / "pwned"
    evil = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"step": 6, "config": Evil()}}, {str(state)!r})
    """)  # fmt: skip
    subprocess.run([sys.executable, "-c", evil], check=True)
    before = snapshot(run_copy)
    assert_refused(
        cli("train", "--resume", run_copy), "not a trilora training state", "objects other than tensors"
    )
    assert not marker.exists()
    assert snapshot(run_copy) == before


def test_bad_generate_options(tiny_model_dir, tmp_path):
    common = [
        "generate",
        "--base",
        tiny_model_dir,
        "--prompt",
        "a cat",
        "--steps",
        "1",
        "--output",
        tmp_path / "x.png",
    ]
    assert_refused(cli(*common, "--height", "33"), "--height must be a positive multiple of 8", "33")
    assert_refused(cli(*common, "--height", "-32"), "--height", "-32")
    assert_refused(cli(*common, "--device", "bogus"), "--device 'bogus'")
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_for_another_base_model_is_named_with_module_and_shapes(tiny_model_dir, tmp_path):
    from trilora.formats.kohya import save_kohya

    module = "unet.down_blocks.0.attentions.0.proj_in"
    wrong = tmp_path / "sdxl_style.safetensors"
    save_kohya(wrong, {module: (torch.zeros(4, 640), torch.zeros(640, 4))}, 4.0,
               {"ss_sd_model_name": "sd_xl_base_1.0.safetensors"}, torch.float32)  # fmt: skip
    result = cli("generate", "--base", tiny_model_dir, "--lora", wrong, "--prompt", "x", "--steps", "1",
                 "--output", tmp_path / "x.png")  # fmt: skip
    assert_refused(result, str(wrong), module, "640 -> 640 in the file", "sd_xl_base_1.0.safetensors")


def test_bad_config_files(tmp_path):
    """One kind of bad --config file per command (every command reads it the same way)."""
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.toml").write_text("[sampling\nsteps = 3")
    (tmp_path / "typed.toml").write_text('[sampling]\nsteps = "many"\n[bench]\nranks = "4,16"\n')
    cases = [("generate", tmp_path, ["is a folder"]), ("evaluate", tmp_path / "none.toml", ["config file not found"]),
             ("compare", tmp_path / "list.json", ["JSON object"]), ("check-data", tmp_path / "broken.toml",
             ["not valid TOML"]), ("bench", tmp_path / "typed.toml", ["sampling.steps must be an integer", "'many'"])]  # fmt: skip
    for command, path, words in cases:
        assert_refused(cli(command, "--config", path), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.toml", "list.json", "typed.toml"]


def test_demo_refuses_zero_steps_before_writing(tmp_path):
    assert_refused(cli("demo", "--steps", "0", "--output", tmp_path / "demo"), "--steps must be at least 1")
    assert not (tmp_path / "demo").exists()


def test_hub_access_is_off_whatever_the_environment_says():
    env = os.environ | {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    code = "import trilora, os; print([os.environ[k] for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "['1', '1', '1']"


def test_a_folder_of_broken_images_is_one_line(tiny_model_dir, tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    (data / "b.jpg").write_bytes(b"")
    assert_refused(cli(*train_args(tiny_model_dir, data, tmp_path / "out", "--steps", "1")))
    assert not (
        tmp_path / "out" / "config.json"
    ).exists()  # a start that failed leaves no run to block a retry
    assert_refused(cli("check-data", data))
    assert_refused(cli("check-data", tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_overwrite_replaces_the_earlier_run_and_says_so(tiny_model_dir, shapes, run_copy):
    result = cli(*train_args(tiny_model_dir, shapes, run_copy, "--method", "lora", "--rank", "2", "--steps", "2",
                             "--checkpoint-every", "2", "--overwrite"))  # fmt: skip
    assert_ok(result)
    assert "--overwrite: deleted the earlier run's files" in result.stderr
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step-000002"]
    config = json.loads((run_copy / "config.json").read_text())
    summary = json.loads((run_copy / "summary.json").read_text())
    assert (config["adapter"]["method"], config["adapter"]["rank"]) == ("lora", 2)
    assert (summary["method"], summary["rank"], summary["steps_run"]) == ("lora", 2, 2)
    steps = [line.split(",")[0] for line in (run_copy / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2"]


def test_two_runs_at_once_on_one_folder_and_a_dead_runs_lock(tiny_model_dir, shapes, tmp_path):
    output = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "trilora", *map(str, train_args(
        tiny_model_dir, shapes, output, "--steps", "100000", "--validate-every", "100000",
        "--checkpoint-every", "0"))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = output / ".trilora.lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = cli(*train_args(tiny_model_dir, shapes, output, "--steps", "2"))
        assert_refused(second, str(output), "is in use by `trilora train`", f"PID {first.pid}")
        resumed = cli("train", "--resume", output, "--steps", "3")
        assert_refused(resumed, "is in use", f"PID {first.pid}")
    finally:
        first.kill()
        first.wait()
    # The kernel released the dead run's lock; its record is left. The next run takes over, warning.
    third = cli(*train_args(tiny_model_dir, shapes, output, "--steps", "1", "--overwrite"))
    assert_ok(third)
    assert "no longer running" in third.stderr and f"PID {first.pid}" in third.stderr
    assert lock.read_text() == ""  # released cleanly


KILL_DURING_KOHYA_EXPORT = """
import os, signal, sys
import safetensors.torch
from pathlib import Path

real_save_file = safetensors.torch.save_file

def save_file(tensors, filename, metadata=None):
    if Path(filename).name.startswith(".run."):  # the kohya export's temporary file
        real_save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 3])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save_file(tensors, filename, metadata=metadata)

safetensors.torch.save_file = save_file
from trilora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_the_export_leaves_the_previous_export_loadable(run_copy, tmp_path):
    exported = run_copy / "run.safetensors"
    before = exported.read_bytes()
    script = tmp_path / "killer.py"
    script.write_text(KILL_DURING_KOHYA_EXPORT)
    killed = subprocess.run([sys.executable, script, "train", "--resume", run_copy, "--steps", "8"],
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert exported.read_bytes() == before
    pairs, _, _ = read_kohya(exported)
    assert len(pairs) > 0
    assert_ok(cli("train", "--resume", run_copy, "--steps", "8"))  # and the run can still finish
    assert json.loads((run_copy / "summary.json").read_text())["steps_run"] == 8
    assert read_kohya(exported)[0].keys() == pairs.keys()


def test_resume_writes_into_the_folder_it_is_given(finished, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)
    original = snapshot(finished)
    resumed = cli("train", "--resume", moved / "checkpoints" / "step-000003", "--steps", "7")
    assert_ok(resumed)
    assert "removing" in resumed.stderr and "step-000006" in resumed.stderr
    assert snapshot(finished) == original  # the folder the run was started in is untouched
    assert json.loads((moved / "summary.json").read_text())["steps_run"] == 7
    assert json.loads((moved / "config.json").read_text())["output"] == str(moved)
    steps = [int(line.split(",")[0]) for line in (moved / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(8))
    # the abandoned continuation's step 6 went at the start; the resumed run wrote its own step 6,
    # then the end's (step 7, before the exports); two are kept
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["step-000006", "step-000007"]


def test_resume_into_another_output_continues_there_with_the_earlier_rows(finished, tmp_path):
    original = snapshot(finished)
    new = tmp_path / "branch"
    assert_ok(
        cli("train", "--resume", finished / "checkpoints" / "step-000003", "--output", new, "--steps", "5")
    )
    assert snapshot(finished) == original
    rows = (new / "metrics.csv").read_text().splitlines()
    earlier = (finished / "metrics.csv").read_text().splitlines()
    assert rows[:5] == earlier[:5]  # header and steps 0-3, copied
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(6))
    assert json.loads((new / "summary.json").read_text())["steps_run"] == 5
    assert (new / "best" / "adapter.safetensors").is_file()
    # into a folder that holds a run: refused like a new run
    assert_refused(cli("train", "--resume", finished, "--output", new, "--steps", "9"), "already holds a run")


def test_demo_and_bench_refuse_to_replace_earlier_results(tmp_path):
    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    (demo / "before_after.png").write_bytes(b"an earlier demo's grid")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "report.md").write_text("an earlier benchmark")
    for folder in (demo, bench):  # what an earlier demo and bench leave: their released lock too
        (folder / ".trilora.lock").write_text("")
    before = snapshot(tmp_path)
    assert_refused(cli("demo", "--output", demo), str(demo), "already holds a demo", "--overwrite")
    assert_refused(
        cli("bench", "toy", "--output", bench, "--steps", "1", "--eval-every", "1"),
        "already holds a benchmark",
        "--overwrite",
    )
    assert snapshot(tmp_path) == before
