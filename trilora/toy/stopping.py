"""Stopping signals, replayed on a bench's runs (each trained to the end with a checkpoint scored at
every validation), and compared by the quality of the checkpoint each would export.

A signal is a value per validation and a direction; with patience P, training stops after P
validations that do not improve on the best so far, and the best-so-far checkpoint is exported
(trilora train's rule). The signals (all but `none` are `trilora train --stop-on` choices):
- `val_loss`: the validation loss over all its timesteps (trilora train's rule before this bench;
  `--stop-on auto` still falls back to it where no scorer is at hand);
- `val_loss_mid`: the validation loss at the mid-range timesteps only (250 <= t < 750 of the toy
  base's 1000), where the loss depends most on what the adapter learnt rather than on the noise level;
- `val_loss_se`: the validation loss, but a validation counts against patience only when its loss
  exceeds the best by more than its standard error (a rise the error bars cannot explain);
- `generation`: held-out prompts (not the test prompts) generated and judged at every validation
  (the measured best: `--stop-on auto` follows it where a scorer is at hand, trilora/training/signal.py):
  the share with style, colour, floors and time all right (higher is better); for real models the
  same role falls to CLIP score and KID against the validation images (`trilora evaluate`);
- `none` (the baseline): no early stopping, the last adapter exported, as kohya's and OneTrainer's
  users do by default.
Quality, from the test prompts: toy FID (lower is better) and fidelity on the colours the training
set never shows (higher is better). A chosen checkpoint is "within 5 %" when its toy FID is at most
1.05 x the lowest of the run, and separately when its unseen-colour fidelity is at least 0.95 x the
highest.
"""

import math

from trilora.toy.report import mean_std
from trilora.training.validation import EarlyStopping, mid_range

TIMESTEPS = 1000  # the toy base's schedule
SIGNALS = ("val_loss", "val_loss_mid", "val_loss_se", "generation")


def replay(points: list[tuple[int, float, float]], patience: int, higher_is_better: bool = False,
           margin: bool = False) -> tuple[int | None, int]:  # fmt: skip
    """(step where training stops, or None; step exported) for (step, value, standard error) points,
    by trilora train's own rule (EarlyStopping). `margin`: a validation counts against patience only
    if it is worse than the best by more than its error."""
    sign = -1.0 if higher_is_better else 1.0
    stopper = EarlyStopping(patience, margin=margin)
    for step, value, se in points:
        stopper.update(sign * value, step, se)
        if stopper.should_stop:
            return step, stopper.best_step
    return None, stopper.best_step


def signal_points(run: dict, signal: str) -> list[tuple[int, float, float]]:
    if signal == "generation":
        return [(c["step"], c["signal"]["all"], 0.0) for c in run["checkpoints"] if "signal" in c]
    points = []
    for v in run["validations"]:
        if signal == "val_loss_mid":
            if not v.get("val_loss_by_t"):
                return []
            points.append((v["step"], mid_range(v["val_loss_by_t"], TIMESTEPS), 0.0))
        else:
            points.append(
                (v["step"], v["val_loss"], v["val_loss_se"] or 0.0 if signal == "val_loss_se" else 0.0)
            )
    return points


def compare_signals(run: dict, patience: int) -> dict:
    """For each signal with data: where it stops, what it exports, and how good that is."""
    by_step = {c["step"]: c for c in run["checkpoints"]}
    fid_best = min(c["fid"] for c in run["checkpoints"])
    unseen = [c.get("fidelity_unseen", math.nan) for c in run["checkpoints"]]
    unseen_best = max((u for u in unseen if not math.isnan(u)), default=math.nan)
    best_fid_step = min(run["checkpoints"], key=lambda c: c["fid"])["step"]
    last = run["checkpoints"][-1]["step"]
    out = {}
    for signal in (*SIGNALS, "none"):
        points = [] if signal == "none" else [p for p in signal_points(run, signal) if p[0] in by_step]
        if signal == "none":  # the baseline: no early stopping, the last adapter exported
            stop, chosen = None, last
        elif len(points) < 2:
            continue
        else:
            stop, chosen = replay(
                points, patience, higher_is_better=signal == "generation", margin=signal == "val_loss_se"
            )
        c = by_step[chosen]
        trained = stop if stop is not None else last
        out[signal] = {
            "stop_step": stop, "chosen_step": chosen, "fid": c["fid"], "fidelity_unseen": c.get("fidelity_unseen"),
            "fid_within_5pct": c["fid"] <= 1.05 * fid_best,
            "unseen_within_5pct": not math.isnan(unseen_best) and c.get("fidelity_unseen", math.nan) >= 0.95 * unseen_best,
            "steps_trained": trained, "wasted": max(0, trained - best_fid_step), "cut_short": max(0, best_fid_step - trained),
        }  # fmt: skip
    return out


def signals_summary(runs: list[dict]) -> dict:
    """Per signal, over all runs: how often within 5 %, and steps trained, wasted and cut short."""
    summary = {}
    for signal in (*SIGNALS, "none"):
        found = [r["signals"][signal] for r in runs if signal in r.get("signals", {})]
        if not found:
            continue
        summary[signal] = {
            "runs": len(found),
            "fid_within_5pct": sum(f["fid_within_5pct"] for f in found),
            "unseen_within_5pct": sum(f["unseen_within_5pct"] for f in found),
            **{k: mean_std([f[k] for f in found]) for k in ("steps_trained", "wasted", "cut_short", "fid")},
        }
    return summary


def unet_passes(signal: str, settings: dict) -> int:
    """What one validation of a signal costs, in UNet evaluations: the validation loss is one forward
    pass per (image, timestep); the generation signal samples each held-out prompt (two passes per
    denoising step with classifier-free guidance)."""
    if signal == "none":
        return 0
    if signal == "generation":
        return settings["signal_prompts"] * settings["sample_steps"] * (2 if settings["guidance"] > 1 else 1)
    return settings["val_images"] * settings["val_timesteps"]


def signals_markdown(summary: dict, settings: dict) -> list[str]:
    if not summary:
        return []
    lines = ["", "## Stopping signals", "",
             f"Each signal replayed with patience {settings['patience']} on the same runs (trilora/toy/stopping.py "
             "says what each is). Within 5 %: runs whose exported checkpoint has a toy FID within 5 % of the run's "
             "lowest, or an unseen-colour fidelity within 5 % of its highest. Steps: mean ± sd over runs. Cost: UNet "
             "evaluations per validation (a training step of batch "
             f"{settings['batch_size']} is about {3 * settings['batch_size']}: forward and backward).", "",
             "| signal | runs | FID within 5 % | unseen fidelity within 5 % | steps trained | wasted after the lowest FID "
             "| cut short before it | toy FID exported | cost per validation |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for signal, s in summary.items():
        f = lambda stat, d=0: "–" if stat["mean"] is None else (  # noqa: E731
            f"{stat['mean']:.{d}f}" + ("" if stat["std"] is None else f" ± {stat['std']:.{d}f}"))  # fmt: skip
        lines.append(f"| `{signal}` | {s['runs']} | {s['fid_within_5pct']} | {s['unseen_within_5pct']} | "
                     f"{f(s['steps_trained'])} | {f(s['wasted'])} | {f(s['cut_short'])} | {f(s['fid'], 1)} | "
                     f"{unet_passes(signal, settings)} |")  # fmt: skip
    return lines


def strengths_markdown(runs: list[dict]) -> list[str]:
    """Style hit and fidelity against adapter strength, mean over seeds, per method, rank and checkpoint."""
    curves = {}
    for run in runs:
        for which, curve in run.get("strengths", {}).items():
            for point in curve:
                key = (run["method"], run["rank"], which, point["strength"])
                curves.setdefault(key, []).append(point)
    if not curves:
        return []
    lines = ["", "### Every strength", "",
             "The best and last adapters of every run at each strength (the kohya file's multiplier), mean over "
             "seeds: style hit, fidelity (all prompts) and fidelity on unseen colours.", "",
             "| method | rank | checkpoint | strength | style hit | fidelity | unseen fidelity | toy FID |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for (method, rank, which, strength), points in curves.items():
        mean = {
            k: sum(p[k] for p in points) / len(points)
            for k in ("style", "fidelity", "fidelity_unseen", "fid")
        }
        lines.append(f"| {method} | {rank} | {which} | {strength:g} | {mean['style']:.2f} | {mean['fidelity']:.2f} | "
                     f"{mean['fidelity_unseen']:.2f} | {mean['fid']:.1f} |")  # fmt: skip
    return lines
