"""The run page's words, read back from a run's folder: the log without progress-bar noise, what the
run is doing now, and an ETA from the recent step rate."""

import pytest

from trilora.ui.jobs import LOG
from trilora.ui.runs import eta_seconds, log_tail, phase, read_log, stop_on

# what a run's log holds: colour codes, tqdm bars rewritten by carriage returns, the trainer's lines
RAW = (
    "\x1b[32mtrilora: base model: Stable Diffusion 1.x (sd1)\x1b[0m\n"
    "Loading pipeline components...:  20%|██        | 1/5 [00:00<00:00,  6.85it/s]"
    "\rLoading pipeline components...: 100%|██████████| 5/5 [00:00<00:00,  8.45it/s]\n"
    "trilora: 30 training images (30 with repeats, 0 class images), 12 validation images\n"
    "class images:  40%|████      | 2/5 [00:03<00:05,  1.2s/it]"
)


def test_the_log_loses_colour_codes_and_progress_bars_and_the_phase_shows_the_latest(tmp_path):
    (tmp_path / LOG).write_text(RAW)
    lines = read_log(tmp_path)
    assert log_tail(lines) == (
        "trilora: base model: Stable Diffusion 1.x (sd1)\n"
        "trilora: 30 training images (30 with repeats, 0 class images), 12 validation images"
    )
    assert phase(lines) == "class images 2/5"  # the bar in its last state
    assert phase(lines[:-1]) == "30 training images (30 with repeats, 0 class images), 12 validation images"
    assert phase([]) is None and read_log(tmp_path / "absent") == []


def test_the_eta_follows_the_recent_rate_not_the_set_up():
    # 60 s of set-up and baseline validation before step 1, then one second per step
    rows = [{"step": s, "elapsed_s": 60.0 + s} for s in range(1, 101)]
    assert eta_seconds(rows, 400) == pytest.approx(
        300.0
    )  # the average since the start: 160 s per 100 steps, 480
    assert eta_seconds(rows[:1], 400) is None and eta_seconds(rows, None) is None
    assert eta_seconds([{"step": 1, "elapsed_s": None}, {"step": 2, "elapsed_s": None}], 10) is None
    assert eta_seconds(rows, 100) == 0.0


def test_what_stopping_follows_is_known_while_the_run_trains():
    auto = {"validation": {"stop_on": "auto"}}
    assert stop_on({}, auto, [{"step": 0, "signal": 0.5}]) == "generation"  # a scorer was found
    assert stop_on({}, auto, [{"step": 0, "signal": None}]) == "val_loss"
    assert stop_on({}, auto, []) == "auto"  # not validated yet: not known
    assert stop_on({"stop_on": "val_loss_mid"}, auto, [{"step": 0, "signal": 0.5}]) == "val_loss_mid"
    assert stop_on({}, {"validation": {"stop_on": "val_loss"}}, [{"step": 0, "signal": 0.5}]) == "val_loss"


def test_a_stopped_run_with_its_export_can_be_resumed_and_a_resumed_run_hides_its_old_summary(tmp_path):
    """Stop exports the best so far (summary.json says `interrupted_by`): still resumable, not finished;
    while it trains again, the old summary's best step and files are not shown as the run's."""
    import json

    from trilora.ui.runs import describe_run, run_state

    run = tmp_path / "runs" / "r"
    (run / "checkpoints" / "step-000004").mkdir(parents=True)
    (run / "checkpoints" / "step-000004" / "state.pt").write_bytes(b"x")
    (run / "r.safetensors").write_bytes(b"x")
    summary = {"exported": {"kohya": str(run / "r.safetensors")}, "exported_step": 2, "best_step": 2,
               "stopped_early": False, "interrupted_by": "SIGINT"}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"train": {"steps": 10}}))
    assert run_state(run, None) == "interrupted"
    shown = describe_run(tmp_path, run)
    assert shown["exported_step"] == 2 and shown["exported"] == {"kohya": "runs/r/r.safetensors"}

    class Running:
        state = "running"

    training = describe_run(tmp_path, run, Running())
    assert training["state"] == "running" and training["exported"] == {} and training["best_step"] is None
    (run / "summary.json").write_text(json.dumps(summary | {"interrupted_by": None}))
    assert run_state(run, None) == "finished"
