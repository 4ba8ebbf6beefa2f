"""The toy bench's analysis and report: replayed early stopping, means over seeds, report.md, plots
and results.json. Everything but the writing is pure functions on the bench's numbers."""

import math
import statistics
from pathlib import Path

from trilora.files import save_figure, write_json, write_text
from trilora.plotting import pyplot
from trilora.training.validation import EarlyStopping

# (key in evaluate.score's result, column title, digits)
METRICS = (
    ("style", "style hit", 2),
    ("fidelity", "fidelity", 2),
    ("colour", "colour", 2),
    ("fid", "toy FID", 1),
    ("nfid", "NFID", 3),
    ("nearest", "nearest", 3),
)


def early_stopping_point(validations: list[tuple[int, float]], patience: int) -> tuple[int | None, int]:
    """(the step where `trilora train --patience P` stops, or None; the step of the adapter it exports).

    Replays the trainer's own EarlyStopping on (step, validation loss) pairs in order.
    """
    if not validations:
        raise ValueError("no validations to replay early stopping on")
    stopper = EarlyStopping(patience)
    for step, loss in validations:
        stopper.update(loss, step)
        if stopper.should_stop:
            return step, stopper.best_step
    return None, stopper.best_step


def analyse_run(run: dict, patience: int) -> dict:
    """Adds to a run the replayed early stopping, its "best" and "last" checkpoints, and how far the
    validation-chosen checkpoint is from the one with the lowest toy FID (in steps and in FID)."""
    by_step = {c["step"]: c for c in run["checkpoints"]}
    stop, chosen = early_stopping_point([(v["step"], v["val_loss"]) for v in run["validations"]], patience)
    lowest = min(run["checkpoints"], key=lambda c: c["fid"])
    stopping = {
        "patience": patience,
        "stop_step": stop,
        "chosen_step": chosen,
        "best_fid_step": lowest["step"],
        "step_gap": chosen - lowest["step"],  # negative: validation chose an earlier checkpoint
        "fid_gap": by_step[chosen]["fid"] - lowest["fid"],  # >= 0: FID given away by trusting validation
    }
    return run | {"early_stopping": stopping, "best": by_step[chosen], "last": run["checkpoints"][-1]}


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for a single value)."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def summarise(runs: list[dict]) -> list[dict]:
    """Per (method, rank), in the runs' order: mean ± std over seeds of every metric of the best and
    last checkpoints, of the chosen step and of the gaps to the lowest-FID checkpoint."""
    summary = []
    for method, rank in dict.fromkeys((r["method"], r["rank"]) for r in runs):
        group = [r for r in runs if (r["method"], r["rank"]) == (method, rank)]
        entry = {"method": method, "rank": rank, "seeds": [r["seed"] for r in group]}
        for which in ("best", "last"):
            entry[which] = {key: mean_std([r[which][key] for r in group]) for key in ("step", *_keys())}
        for key in ("step_gap", "fid_gap"):
            entry[key] = mean_std([r["early_stopping"][key] for r in group])
        entry["stopped"] = sum(r["early_stopping"]["stop_step"] is not None for r in group)
        summary.append(entry)
    return summary


def write_report(output: Path, results: dict) -> None:
    """results.json, plots/*.png and report.md (which embeds the plots) in `output`."""
    output = Path(output)
    write_json(output / "results.json", results)
    (output / "plots").mkdir(parents=True, exist_ok=True)
    plots = []
    for entry in results["summary"]:
        name = f"plots/curves-{entry['method']}-r{entry['rank']}.png"
        runs = [r for r in results["runs"] if (r["method"], r["rank"]) == (entry["method"], entry["rank"])]
        plot_curves(runs, results["base"]["fid"], output / name, f"{entry['method']} rank {entry['rank']}")
        plots.append((f"{entry['method']} rank {entry['rank']}", name))
    plot_fid_overview(results, output / "plots" / "fid.png")
    if all("truth" in run for run in results["runs"]):
        plot_truth(results, output / "plots" / "truth.png")
        plots.append(
            (
                "ground truth: joint hit per checkpoint, 95 % interval, best and the default's pick",
                "plots/truth.png",
            )
        )
    # here, not at the top: an import cycle
    from trilora.toy.overfitting import onset_markdown, strength_summary_markdown

    # here, not at the top: an import cycle
    from trilora.toy.stopping import rules_markdown, strengths_markdown, truth_markdown

    extra = []
    if all("truth" in run for run in results["runs"]):
        extra += truth_markdown(results["runs"], results["settings"])
    extra += rules_markdown(results.get("rules", {}), results["settings"])
    extra += onset_markdown(results["runs"]) + strength_summary_markdown(results["runs"])
    extra += strengths_markdown(results["runs"])
    write_text(
        output / "report.md", report_markdown(results, plots) + "\n".join(extra) + ("\n" if extra else "")
    )


def report_markdown(results: dict, plots: list[tuple[str, str]]) -> str:
    s, base = results["settings"], results["base"]
    seconds = results["seconds"]
    lines = [
        "# Toy bench: LoRA and TriLoRA in the toy world",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        f"Task: the `{s['style']}` style, which the base model never saw, from {s['train_images']} renders in "
        f"{', '.join(s['train_colours'])} walls; validation loss on {s['val_images']} held-out renders of the same style and "
        f"colours ({s['val_timesteps']} fixed timesteps each). {s['steps']} steps of batch {s['batch_size']} at "
        f"lr {s['lr']:g}, {len(s['methods'])} method(s) x {len(s['ranks'])} rank(s) x {s['seeds']} seed(s); "
        f"validation, checkpoint and scoring every {s['eval_every']} steps. Base model: `{s['base']}`.",
        "",
        f"Scores on {s['prompts']} test prompts of the style in all colours, floors and times (prompt seed "
        f"{s['prompt_seed']}; image k from latent seed {s['image_seed']}+k, {s['sample_steps']} steps, guidance "
        f"{s['guidance']:g}), read by the "
        "toy judge: **style hit** = judged to be the style; **fidelity** = colour, floors and time all as "
        "asked (our CLIP-score analogue); **colour** = wall colour as asked (the training set shows only "
        f"{len(s['train_colours'])} of the 8 colours); **toy FID** against fresh renders of the same prompts (lower is "
        "better); **NFID** = toy FID / the base model's (below 1: closer to the renders than the base); "
        "**nearest** = mean RMS pixel distance (0-1) to the nearest training image (lower: closer to copying).",
        "",
        f"**best** = the checkpoint `trilora train --patience {s['patience']}` would export: early stopping "
        "replayed on each run's validation losses (each run trains with patience 0 to the end; noise, "
        "timesteps and data order depend only on seed and step, so the runs coincide up to the stopping "
        f"point). **last** = step {s['steps']}. Mean ± standard deviation over seeds.",
        "",
        "## Scores",
        "",
        "| method | rank | checkpoint | step | " + " | ".join(title for _, title, _ in METRICS) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
        "| base model | – | – | – | " + " | ".join(f"{base[k]:.{d}f}" for k, _, d in METRICS) + " |",
    ]
    for entry in results["summary"]:
        for which in ("best", "last"):
            cells = [_fmt(entry[which][k], d) for k, _, d in METRICS]
            lines.append(f"| {entry['method']} | {entry['rank']} | {which} | {_fmt(entry[which]['step'], 0)} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    lines += [
        "",
        "## Does the validation loss pick the right checkpoint?",
        "",
        "The validation-chosen checkpoint against the checkpoint with the lowest toy FID (step 0 is the "
        "base model: every adapter starts as the identity). Step gap < 0: validation chose an earlier "
        "checkpoint; FID gap: toy FID given away by trusting the validation loss.",
        "",
        "| method | rank | seed | stopped at | chosen step | lowest-FID step | step gap | FID chosen "
        "| FID lowest | FID gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        e = run["early_stopping"]
        stop = "–" if e["stop_step"] is None else str(e["stop_step"])
        lowest = next(c for c in run["checkpoints"] if c["step"] == e["best_fid_step"])
        lines.append(f"| {run['method']} | {run['rank']} | {run['seed']} | {stop} | {e['chosen_step']} | "
                     f"{e['best_fid_step']} | {e['step_gap']:+d} | {run['best']['fid']:.1f} | {lowest['fid']:.1f} | "
                     f"{e['fid_gap']:.1f} |")  # fmt: skip
    lines += [
        "",
        "| method | rank | runs stopped early | step gap | FID gap |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in results["summary"]:
        lines.append(f"| {entry['method']} | {entry['rank']} | {entry['stopped']} of {len(entry['seeds'])} | "
                     f"{_fmt(entry['step_gap'], 0, '+')} | {_fmt(entry['fid_gap'], 1)} |")  # fmt: skip
    lines += [
        "",
        "## Curves",
        "",
        "Mean toy FID over seeds at every checkpoint:",
        "",
        "![toy FID](plots/fid.png)",
        "",
    ]
    lines += [
        "Per method and rank, one colour per seed: validation loss (top) and toy FID (bottom); a star marks "
        "the validation-chosen checkpoint, a triangle the lowest toy FID, a dashed line where early stopping "
        "would have stopped.",
        "",
    ]
    for title, name in plots:
        lines += [f"![{title}]({name})", ""]
    lines += [
        f"Wall time of this invocation: training {seconds['train']:.0f} s, evaluation {seconds['evaluate']:.0f} s, "
        f"total {seconds['total']:.0f} s (a resumed bench counts only what it did itself; each run's training "
        f"seconds since its last start are in results.json: {sum(r['train_seconds'] for r in results['runs']):.0f} s "
        "in all). Every number is in results.json.",
        "",
    ]
    return "\n".join(lines)


def plot_curves(runs: list[dict], base_fid: float, path: Path, title: str) -> None:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5), dpi=100)
    for k, run in enumerate(runs):
        colour = f"C{k % 10}"
        e = run["early_stopping"]
        val = {v["step"]: v["val_loss"] for v in run["validations"]}
        fid = {c["step"]: c["fid"] for c in run["checkpoints"]}
        top.plot(list(val), list(val.values()), color=colour, marker=".", label=f"seed {run['seed']}")
        bottom.plot(list(fid), list(fid.values()), color=colour, marker=".", label=f"seed {run['seed']}")
        top.plot([e["chosen_step"]], [val[e["chosen_step"]]], color=colour, marker="*", markersize=14)
        bottom.plot([e["chosen_step"]], [fid[e["chosen_step"]]], color=colour, marker="*", markersize=14)
        bottom.plot([e["best_fid_step"]], [fid[e["best_fid_step"]]], color=colour, marker="v", markersize=9)
        if e["stop_step"] is not None:
            for ax in (top, bottom):
                ax.axvline(e["stop_step"], color=colour, linestyle="--", alpha=0.7)
    bottom.axhline(base_fid, color="grey", linestyle=":", label="base model")
    markers = [("*", "none", "validation-chosen"), ("v", "none", "lowest toy FID"), ("", "--", "early stop")]
    for marker, linestyle, label in markers:
        bottom.plot([], [], color="black", marker=marker, linestyle=linestyle, label=label)
    values = [c["fid"] for run in runs for c in run["checkpoints"]]
    if min(values) > 0 and max(values) / min(values) > 20:
        bottom.set_yscale("log")
    top.set_ylabel("validation loss")
    bottom.set_ylabel("toy FID")
    bottom.set_xlabel("optimiser step")
    top.set_title(title)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend()
    bottom.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_fid_overview(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for entry in results["summary"]:
        runs = [r for r in results["runs"] if (r["method"], r["rank"]) == (entry["method"], entry["rank"])]
        steps = [c["step"] for c in runs[0]["checkpoints"]]
        means = [statistics.fmean(run["checkpoints"][i]["fid"] for run in runs) for i in range(len(steps))]
        ax.plot(steps, means, marker=".", label=f"{entry['method']} rank {entry['rank']}")
    ax.axhline(results["base"]["fid"], color="grey", linestyle=":", label="base model")
    values = [c["fid"] for run in results["runs"] for c in run["checkpoints"]]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"toy FID (mean over {results['settings']['seeds']} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_truth(results: dict, path: Path) -> None:
    """Per method and rank: each run's joint hit per checkpoint with its bootstrap interval (shaded),
    its best checkpoint (triangle) and the checkpoint the default rule exports (star)."""
    plt = pyplot()
    groups = [(e["method"], e["rank"]) for e in results["summary"]]
    columns = min(2, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, sharex=True, sharey=True, figsize=(5 * columns, 3.6 * rows), dpi=100,
                             squeeze=False)  # fmt: skip
    default = results.get("rules", {}).get("default")
    for ax, (method, rank) in zip(axes.flat, groups, strict=False):
        runs = [r for r in results["runs"] if (r["method"], r["rank"]) == (method, rank)]
        for k, run in enumerate(runs):
            t, colour = run["truth"], f"C{k % 10}"
            ax.fill_between(t["steps"], t["low"], t["high"], color=colour, alpha=0.12)
            ax.plot(t["steps"], t["joint"], color=colour, marker=".", label=f"seed {run['seed']}")
            ax.plot([t["best_step"]], [t["best"]], color=colour, marker="v", markersize=9)
            if default in run.get("rules", {}):
                step = run["rules"][default]["chosen_step"]
                ax.plot([step], [t["joint"][t["steps"].index(step)]], color=colour, marker="*", markersize=13)
        ax.set_title(f"{method} rank {rank}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    first = axes.flat[0]
    first.plot([], [], color="black", marker="v", linestyle="none", label="best")
    first.plot([], [], color="black", marker="*", linestyle="none", label="default rule's pick")
    first.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("joint hit")
    for ax in axes[-1]:
        ax.set_xlabel("optimiser step")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _keys() -> tuple[str, ...]:
    return tuple(key for key, _, _ in METRICS)


def _fmt(stat: dict, digits: int, sign: str = "") -> str:
    """`mean ± std`, or the mean alone for one seed; sign "+" shows the sign of the mean."""
    mean = f"{stat['mean']:{sign}.{digits}f}"
    if stat["std"] is None or not math.isfinite(stat["std"]):
        return mean
    return f"{mean} ± {stat['std']:.{digits}f}"
