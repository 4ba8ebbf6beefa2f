"""`trilora bench toy`: end to end on a random-weight toy base, and its replayed early stopping."""

import json
import math
import shlex

import pytest
import torch

from trilora.cli import build_parser, main, tree_from_args
from trilora.toy.base import build_toy_pipeline
from trilora.toy.report import analyse_run, early_stopping_point, mean_std

SETTINGS = ["--methods", "lora,trilora", "--ranks", "2", "--seeds", "2", "--steps", "6", "--eval-every", "3",
            "--prompts", "4"]  # fmt: skip
SCORES = ("style", "colour", "floors", "time", "all", "fidelity", "fid", "nfid", "nearest")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The bench output folder of one reduced run (two methods, one rank, two seeds, 6 steps, 4 prompts)."""
    root = tmp_path_factory.mktemp("bench")
    build_toy_pipeline(0).save_pretrained(root / "base")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core CPU, two threads per process oversubscribe it several-fold
    try:
        code = main(["bench", "toy", *SETTINGS, "--output", str(root / "out"), "--base", str(root / "base")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root / "out"


@pytest.fixture(scope="module")
def results(bench):
    return json.loads((bench / "results.json").read_text())


def numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.slow  # ~25 s on a 2-core CPU: four 6-step trainings and nine scorings of 4 prompts
def test_every_run_is_scored_at_every_checkpoint(results):
    assert [(r["method"], r["rank"], r["seed"]) for r in results["runs"]] == [
        ("lora", 2, 0), ("lora", 2, 1), ("trilora", 2, 0), ("trilora", 2, 1)
    ]  # fmt: skip
    base = results["base"]
    assert base["nfid"] == 1.0  # the base against itself
    assert all(math.isfinite(n) for n in numbers(results))
    for run in results["runs"]:
        steps = [c["step"] for c in run["checkpoints"]]
        assert steps == [0, 3, 6] and [v["step"] for v in run["validations"]] == steps
        assert run["checkpoints"][0] == {"step": 0} | base  # every adapter starts as the identity
        for checkpoint in run["checkpoints"]:
            assert set(SCORES) <= set(checkpoint)
            assert all(0 <= checkpoint[k] <= 1 for k in ("style", "colour", "fidelity", "all"))
            assert checkpoint["nfid"] == pytest.approx(checkpoint["fid"] / base["fid"])
        # trained adapters are in the pipeline when it generates: the images, hence the FID, moved
        assert all(c["fid"] != base["fid"] for c in run["checkpoints"][1:])
    last_fids = {(r["method"], r["seed"]): r["last"]["fid"] for r in results["runs"]}
    assert len(set(last_fids.values())) == 4


@pytest.mark.slow
def test_best_is_the_lowest_validation_loss_and_last_the_last_step(results):
    for run in results["runs"]:
        stopping = run["early_stopping"]
        lowest_val = min(run["validations"], key=lambda v: v["val_loss"])["step"]
        assert stopping["stop_step"] is None  # patience 5 cannot run out in 3 validations
        assert run["best"]["step"] == stopping["chosen_step"] == lowest_val
        assert run["last"]["step"] == 6
        lowest_fid = min(run["checkpoints"], key=lambda c: c["fid"])
        assert stopping["best_fid_step"] == lowest_fid["step"]
        assert stopping["step_gap"] == stopping["chosen_step"] - lowest_fid["step"]
        assert (
            stopping["fid_gap"] == pytest.approx(run["best"]["fid"] - lowest_fid["fid"])
            and stopping["fid_gap"] >= 0
        )


@pytest.mark.slow
def test_summary_is_the_mean_and_std_over_seeds(results):
    assert [(s["method"], s["rank"], s["seeds"]) for s in results["summary"]] == [
        ("lora", 2, [0, 1]), ("trilora", 2, [0, 1])
    ]  # fmt: skip
    for entry in results["summary"]:
        runs = [r for r in results["runs"] if r["method"] == entry["method"]]
        for which in ("best", "last"):
            for key in ("step", "style", "fidelity", "colour", "fid", "nfid", "nearest"):
                values = [r[which][key] for r in runs]
                assert entry[which][key]["mean"] == pytest.approx(sum(values) / 2)
                assert entry[which][key]["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))


@pytest.mark.slow
def test_report_states_its_command_and_shows_every_configuration(bench, results):
    report = (bench / "report.md").read_text()
    lines = report.splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```sh"
    command = lines[3]
    assert command == results["command"]
    settings = tree_from_args(build_parser().parse_args(shlex.split(command)[1:]))[0].bench  # the same bench
    assert (settings.world, settings.methods, settings.ranks, settings.seeds, settings.steps, settings.eval_every,
            settings.prompts) == ("toy", ["lora", "trilora"], [2], 2, 6, 3, 4)  # fmt: skip
    assert settings.output == str(bench)
    rows = [line for line in lines if line.startswith("| lora |") or line.startswith("| trilora |")]
    for method in ("lora", "trilora"):
        for which in ("best", "last"):
            assert sum(row.startswith(f"| {method} | 2 | {which} |") for row in rows) == 1
    assert "| base model |" in report and " ± " in report
    for name in ("plots/fid.png", "plots/curves-lora-r2.png", "plots/curves-trilora-r2.png"):
        assert f"]({name})" in report
        assert (bench / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "lora,dora"], "--methods must be one of lora, trilora, got 'dora'"),
        (["--ranks", "4,0"], "--ranks must be at least 1"),
        (["--ranks", "four"], "--ranks must be comma-separated whole numbers"),
        (["--steps", "10", "--eval-every", "3"], "must be a multiple of --eval-every"),
        (["--prompts", "1"], "--prompts must be at least 2"),
        (["--eval-every", "0"], "--eval-every must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(capsys, tmp_path, flags, message):
    (tmp_path / "base").mkdir()
    code = main(["bench", "toy", *flags, "--output", str(tmp_path / "out"), "--base", str(tmp_path / "base")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("trilora: error:")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_missing_base_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["bench", "toy", "--output", str(tmp_path / "out"), "--base", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "toy base model not found" in err and str(tmp_path / "nowhere") in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_early_stopping_replay_stops_where_the_trainer_would():
    validations = [(0, 5.0), (10, 4.0), (20, 3.0), (30, 3.5), (40, 3.0), (50, 2.0)]
    assert early_stopping_point(validations, patience=2) == (40, 20)  # an equal loss is no improvement
    assert early_stopping_point(validations, patience=3) == (None, 50)
    assert early_stopping_point(validations, patience=0) == (None, 50)  # 0 never stops
    assert early_stopping_point([(0, 1.0)], patience=1) == (None, 0)


def test_analyse_run_measures_the_gap_to_the_lowest_fid():
    run = {
        "validations": [{"step": s, "val_loss": v} for s, v in [(0, 3.0), (5, 2.0), (10, 2.5), (15, 2.6)]],
        "checkpoints": [{"step": s, "fid": f} for s, f in [(0, 90.0), (5, 60.0), (10, 40.0), (15, 50.0)]],
    }
    analysed = analyse_run(run, patience=2)
    assert analysed["early_stopping"] == {"patience": 2, "stop_step": 15, "chosen_step": 5, "best_fid_step": 10,
                                          "step_gap": -5, "fid_gap": 20.0}  # fmt: skip
    assert analysed["best"]["step"] == 5 and analysed["last"]["step"] == 15


def test_mean_std_has_no_spread_for_one_seed():
    assert mean_std([2.0]) == {"mean": 2.0, "std": None}
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2))}


def test_replayed_rules_stop_where_their_rules_say():
    from trilora.toy.stopping import replay

    points = [(0, 1.0, 0.1), (10, 0.5, 0.1), (20, 0.55, 0.1), (30, 0.58, 0.1), (40, 0.7, 0.1)]
    assert replay(points, 2) == (30, 10)  # two validations without improvement
    assert replay(points, 2, margin=True) == (None, 10)  # only step 40 rose by more than its error
    assert replay(points, 0) == (None, 10)  # patience 0 never stops
    assert replay([(0, 0.1, 0), (10, 0.5, 0), (20, 0.4, 0)], 1, higher_is_better=True) == (20, 10)
    # a lucky spike wins the raw signal; the mean of three follows the plateau after it
    spiky = [
        (s, v, 0) for s, v in [(0, 0.0), (10, 1.0), (20, 0.6), (30, 0.8), (40, 0.9), (50, 0.9), (60, 0.5)]
    ]
    assert replay(spiky, 3, higher_is_better=True) == (40, 10)
    # (0.8 + 0.9 + 0.9) / 3 is the best
    assert replay(spiky, 3, higher_is_better=True, window=3) == (None, 50)


def test_the_ground_truth_is_the_joint_hit_with_paired_bootstrap_intervals():
    from trilora.toy.truth import hit_probability, joint, prompt_hits, run_truth
    from trilora.toy.world import Attributes

    wanted = [Attributes("onion", "red", 2, "day"), Attributes("onion", "blue", 3, "night")]
    seen = [Attributes("onion", "red", 2, "day"), Attributes("onion", "green", 3, "night")]
    hits = prompt_hits(seen, wanted)
    assert hits == {"style": [1, 1], "fidelity": [1, 0]} and joint(hits) == 0.5
    n = 200  # checkpoint 1 is right on 90 % of prompts, 2 on 88 % (nearly as good), 0 on 10 %
    checkpoints = [{"style": [1] * n, "fidelity": [int(i < k) for i in range(n)]} for k in (20, 180, 176)]
    truth = run_truth(checkpoints, [0, 10, 20], draws=200)
    assert truth["best_step"] == 10 and truth["best"] == pytest.approx(0.9)
    assert all(lo <= v <= hi for lo, v, hi in zip(truth["low"], truth["joint"], truth["high"], strict=True))
    assert truth["high"][0] < 0.2 and 0.8 < truth["low"][1]  # the intervals shrink as 1/sqrt(prompts)
    assert truth["best_stable"] == 1.0  # paired: a draw resamples both alike, so 2 never overtakes 1
    assert hit_probability(truth, 20) > 0.95 and hit_probability(truth, 0) == 0.0


def synthetic_run(seed: int, joints: list[float]) -> dict:
    """A run whose generation signal and truth peak at step 20 of 0..40 (validation loss at step 10)."""
    steps = [0, 10, 20, 30, 40]
    n = 20
    checkpoints = []
    for s, j in zip(steps, joints, strict=True):
        hits = {"style": [1] * n, "fidelity": [int(i < round(j * n)) for i in range(n)]}
        signal = {"all": j, "style": 1.0, "fidelity": j}
        checkpoints.append({"step": s, "fid": 100 - 100 * j, "fidelity_unseen": j, "signal": signal, "wide": signal,
                            "kid": 1 - j, "truth": hits})  # fmt: skip
    from trilora.toy.truth import run_truth

    validations = [{"step": s, "val_loss": v, "val_loss_se": 0.01, "val_loss_by_t": {375: v}}
                   for s, v in zip(steps, [0.9, 0.5, 0.6, 0.7, 0.8], strict=True)]  # fmt: skip
    run = {"seed": seed, "validations": validations, "checkpoints": checkpoints}
    run["truth"] = run_truth([c.pop("truth") for c in checkpoints], steps, draws=50)
    return run


def test_rules_are_judged_by_the_ground_truth_and_costed_in_unet_passes():
    from trilora.toy.stopping import compare_rules, rules_summary

    settings = {"patience": 1, "eval_every": 10, "batch_size": 4, "val_images": 10, "val_timesteps": 8,
                "signal_prompts": 16, "sample_steps": 20, "guidance": 3.0}  # fmt: skip
    runs = [synthetic_run(seed, [0.0, 0.5, 0.9, 0.6, 0.4]) for seed in (0, 1)]
    runs.append(synthetic_run(2, [0.0, 0.9, 0.5, 0.95, 0.4]))  # a held-out run whose best is later
    for run in runs:
        run["rules"] = compare_rules(run, settings)
    first = runs[0]["rules"]
    loss = first["val_loss, patience 1"]
    assert (loss["stop_step"], loss["chosen_step"], loss["hit"]) == (20, 10, False)  # 0.5 < 0.95 x 0.9
    assert loss["unet_passes"] == 20 * 12 + 3 * 80 and loss["cost"] == pytest.approx(1 + 240 / 240)
    generation = first["generation, patience 1"]
    assert (generation["stop_step"], generation["chosen_step"], generation["hit"]) == (30, 20, True)
    assert generation["unet_passes"] == 30 * 12 + 4 * (80 + 16 * 20 * 2)
    assert first["kid, patience 1"]["chosen_step"] == 20  # lower is better
    assert (
        first["none, to the end"]["chosen_step"] == 40 and first["none, to the end"]["unet_passes"] == 40 * 12
    )
    summary = rules_summary(runs, tune_seeds=2)
    g = summary["rules"]["generation, patience 1"]
    assert (g["tune"]["hits"], g["held_out"]["hits"]) == (2, 0)  # stopped at 20 before the later best
    assert summary["rules"]["generation, to the end, mean of 3"]["held_out"]["hits"] == 1  # the mean finds 30
    assert summary["default"] in {n for n, s in summary["rules"].items() if s["tune"]["hits"] == 2}
    assert "held_out" not in rules_summary(runs, tune_seeds=0)["rules"]["val_loss, patience 1"]  # no split


@pytest.mark.slow  # ~60 s: the long-run setting, reduced, and its resume
def test_the_trainers_defaults_are_the_rule_the_long_bench_chose():
    """trilora train's default stopping is the committed long bench's chosen rule: its signal (the toy
    judge's style hit x fidelity on the held-out prompts), its patience and its window."""
    from pathlib import Path

    from trilora.config import ValidationConfig

    results = json.loads((Path(__file__).parents[2] / "benchmarks/toy/long/results.json").read_text())
    name = results["rules"]["default"]
    chosen = next(r["rules"][name] for r in results["runs"] if name in r["rules"])
    defaults = ValidationConfig()
    assert (
        chosen["signal"] == "generation_split" and defaults.stop_on == "auto"
    )  # the toy signal: tested apart
    assert (chosen["patience"], chosen["window"]) == (defaults.patience, defaults.stop_window)


def test_long_setting_scores_unseen_colours_signals_and_strengths_and_resumes(tmp_path):
    build_toy_pipeline(0).save_pretrained(tmp_path / "base")
    args = ["bench", "toy", "--methods", "trilora", "--ranks", "2", "--seeds", "1", "--steps", "4", "--eval-every", "2",
            "--prompts", "4", "--truth-prompts", "6", "--train-images", "6", "--train-colours", "2", "--signal-prompts", "2",
            "--strengths", "1.5", "--output", str(tmp_path / "out"), "--base", str(tmp_path / "base")]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
        first = json.loads((tmp_path / "out" / "results.json").read_text())
        run = first["runs"][0]
        assert all("fidelity_unseen" in c and {"signal", "wide", "kid"} <= set(c) for c in run["checkpoints"])
        assert (
            len(run["truth"]["joint"]) == len(run["checkpoints"]) == 3
            and first["settings"]["truth_prompts"] == 6
        )
        assert {r["signal"] for r in run["rules"].values()} == {"val_loss", "val_loss_mid", "val_loss_se", "generation",
                                                                "generation_split", "wide", "wide_split", "kid", "none"}  # fmt: skip
        assert [p["strength"] for p in run["strengths"]["last"]] == [1.5]
        assert first["settings"]["train_colours"] == ["red", "blue"]
        report = (tmp_path / "out" / "report.md").read_text()
        assert "## Stopping rules" in report and "## Ground truth" in report
        assert main(args) == 2  # a second start is refused; --resume continues, reusing runs and scores
        assert main([*args, "--resume"]) == 0
        again = json.loads((tmp_path / "out" / "results.json").read_text())
        assert again["runs"][0]["checkpoints"] == run["checkpoints"] and again["rules"] == first["rules"]
        assert again["runs"][0]["strengths"] == run["strengths"]  # read back from strengths.json
        assert list((tmp_path / "out").glob("runs/*/checkpoints/step-*/strengths.json"))
        assert main([*args[:-4], "--steps", "6", "--output", str(tmp_path / "out"), "--resume"]) == 2
    finally:
        torch.set_num_threads(threads)
