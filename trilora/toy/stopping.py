"""Stopping rules, replayed on a bench's runs (each trained to the end with every checkpoint scored),
and judged by the ground truth (trilora/toy/truth.py): does the checkpoint a rule exports have a
joint hit (style and prompt both right, on the many truth prompts) within 5 % of the run's best?

A rule is a signal (a value per validation, with a direction), a trailing mean over `window`
validations, and a patience: training stops after `patience` validations that do not improve on the
best (smoothed) value so far, and that best step's adapter is exported (trilora train's
EarlyStopping); patience 0 trains to the end and exports the best. The signals:
- `val_loss`: the validation loss over all its timesteps;
- `val_loss_mid`: the validation loss at the mid-range timesteps only (250 <= t < 750 of 1000);
- `val_loss_se`: the validation loss, a validation counting against patience only when it exceeds
  the best by more than its standard error;
- `generation`: held-out prompts (not the test or truth prompts) sampled at the protocol's steps and
  judged: the share with style, colour, floors and time all right (the joint hit, on other prompts);
- `generation_split`: the same images, the style hit times the fidelity (scored separately);
- `wide`: three times as many held-out prompts at WIDE_STEPS denoising steps, joint hit;
- `wide_split`: those images, style hit times fidelity;
- `kid`: KID between the validation captions' generated images (two each) and the validation images
  on the judge's features (lower is better): a distribution distance that carries over to real
  models with Inception's features;
- `none` (the baseline): no early stopping, the last adapter exported.
Cost: UNet evaluations, training (forward and backward of a batch: 3 x batch) and validations (the
validation loss is measured at every validation: images x timesteps; sampling with guidance: 2 per
prompt and denoising step), against the training's own.
"""

import math
from dataclasses import dataclass

from trilora.toy.report import mean_std
from trilora.toy.truth import hit_probability, within
from trilora.training.validation import EarlyStopping, mid_range

TIMESTEPS = 1000  # the toy base's schedule
WIDE_STEPS = 8  # the wide signal's denoising steps
WIDE_FACTOR = 3  # the wide signal's prompts per generation-signal prompt
LOSS_SIGNALS = ("val_loss", "val_loss_mid", "val_loss_se")
SAMPLED_SIGNALS = ("generation", "generation_split", "wide", "wide_split", "kid")
HIGHER_IS_BETTER = {"generation", "generation_split", "wide", "wide_split"}


@dataclass(frozen=True)
class Rule:
    signal: str
    patience: int  # 0: train to the end and export the best
    window: int = 1  # trailing mean over this many validations

    @property
    def name(self) -> str:
        stop = "to the end" if self.patience == 0 else f"patience {self.patience}"
        return f"{self.signal}, {stop}" + (f", mean of {self.window}" if self.window > 1 else "")


def rules(patience: int) -> list[Rule]:
    """The rules compared: each validation-loss signal at the bench's patience; each sampled signal
    raw and smoothed at that patience, smoothed at twice it, and smoothed to the end; and `none`."""
    found = [Rule(s, patience) for s in LOSS_SIGNALS]
    for s in SAMPLED_SIGNALS:
        found += [Rule(s, patience), Rule(s, patience, 3), Rule(s, 2 * patience, 3), Rule(s, 0, 3)]
    return [*found, Rule("none", 0)]


def replay(points: list[tuple[int, float, float]], patience: int, higher_is_better: bool = False,
           margin: bool = False, window: int = 1) -> tuple[int | None, int]:  # fmt: skip
    """(step where training stops, or None; step exported) for (step, value, standard error) points,
    by trilora train's own rule (EarlyStopping) on the trailing mean of `window` values. `margin`: a
    validation counts against patience only if it is worse than the best by more than its error."""
    sign = -1.0 if higher_is_better else 1.0
    stopper = EarlyStopping(patience, margin=margin, window=window)
    for step, value, se in points:
        stopper.update(sign * value, step, se)
        if stopper.should_stop:
            return step, stopper.best_step
    return None, stopper.best_step


def signal_points(run: dict, signal: str) -> list[tuple[int, float, float]]:
    """(step, value, standard error) at every validation of a run for one signal ([]: not measured)."""
    if signal in SAMPLED_SIGNALS:
        source, split = signal.removesuffix("_split"), signal.endswith("_split")
        source = "signal" if source == "generation" else source
        found = [c for c in run["checkpoints"] if source in c]
        if source == "kid":
            return [(c["step"], c["kid"], 0.0) for c in found]
        return [(c["step"], c[source]["style"] * c[source]["fidelity"] if split else c[source]["all"], 0.0)
                for c in found]  # fmt: skip
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


def validation_passes(signal: str, settings: dict) -> int:
    """UNet evaluations of one validation for a signal (the validation loss is always measured)."""
    loss = settings["val_images"] * settings["val_timesteps"]
    guided = 2 if settings["guidance"] > 1 else 1
    if signal == "none":
        return 0
    if signal.startswith("generation"):
        return loss + settings["signal_prompts"] * settings["sample_steps"] * guided
    if signal.startswith("wide"):
        return loss + WIDE_FACTOR * settings["signal_prompts"] * WIDE_STEPS * guided
    if signal == "kid":
        return loss + 2 * settings["val_images"] * settings["sample_steps"] * guided
    return loss


def compare_rules(run: dict, settings: dict) -> dict:
    """For each rule with data: where it stops, what it exports, how good that is by the ground truth
    (run["truth"]), and what it cost."""
    truth, by_step = run["truth"], {c["step"]: c for c in run["checkpoints"]}
    fid_best = min(c["fid"] for c in run["checkpoints"])
    unseen = [
        c["fidelity_unseen"] for c in run["checkpoints"] if not math.isnan(c.get("fidelity_unseen", math.nan))
    ]
    unseen_best = max(unseen, default=math.nan)
    last, every, step_passes = (
        run["checkpoints"][-1]["step"],
        settings["eval_every"],
        3 * settings["batch_size"],
    )
    out = {}
    for rule in rules(settings["patience"]):
        if rule.signal == "none":
            stop, chosen = None, last
        else:
            points = [p for p in signal_points(run, rule.signal) if p[0] in by_step]
            if len(points) < 2:
                continue
            stop, chosen = replay(points, rule.patience, rule.signal in HIGHER_IS_BETTER,
                                  rule.signal == "val_loss_se", rule.window)  # fmt: skip
        trained = stop if stop is not None else last
        value = truth["joint"][truth["steps"].index(chosen)]
        validations = 0 if rule.signal == "none" else trained // every + 1
        passes = trained * step_passes + validations * validation_passes(rule.signal, settings)
        c = by_step[chosen]
        out[rule.name] = {
            "signal": rule.signal, "patience": rule.patience, "window": rule.window,
            "stop_step": stop, "chosen_step": chosen, "steps_trained": trained,
            "joint": value, "given_away": truth["best"] - value, "hit": within(value, truth["best"]),
            "hit_probability": hit_probability(truth, chosen),
            "fid_within_5pct": c["fid"] <= 1.05 * fid_best,
            "unseen_within_5pct": c.get("fidelity_unseen", math.nan) >= 0.95 * unseen_best,
            "unet_passes": passes, "cost": passes / max(1, trained * step_passes),
        }  # fmt: skip
    return out


def rules_summary(runs: list[dict], tune_seeds: int) -> dict:
    """Per rule, on the tuning runs (seed < tune_seeds) and on the held-out ones: hits, mean hit
    probability, joint hit given away, steps trained and cost; and the default chosen on the tuning
    runs alone (tune_seeds 0: every run tunes, none is held out; most hits, then the highest hit probability, then the lowest cost)."""
    groups = {"tune": [r for r in runs if not tune_seeds or r["seed"] < tune_seeds],
              "held_out": [r for r in runs if tune_seeds and r["seed"] >= tune_seeds]}  # fmt: skip
    summary = {}
    for name in dict.fromkeys(n for r in runs for n in r.get("rules", {})):
        summary[name] = {}
        for group, members in groups.items():
            found = [r["rules"][name] for r in members if name in r.get("rules", {})]
            if not found:
                continue
            summary[name][group] = {
                "runs": len(found), "hits": sum(f["hit"] for f in found),
                "fid_hits": sum(f["fid_within_5pct"] for f in found),
                **{k: mean_std([f[k] for f in found]) for k in ("hit_probability", "given_away", "steps_trained", "cost")},
            }  # fmt: skip
    tuned = {n: s["tune"] for n, s in summary.items() if "tune" in s}
    default = max(tuned, key=lambda n: (tuned[n]["hits"], tuned[n]["hit_probability"]["mean"], -tuned[n]["cost"]["mean"]),
                  default=None)  # fmt: skip
    return {"rules": summary, "default": default, "tune_seeds": tune_seeds}


def truth_markdown(runs: list[dict], settings: dict) -> list[str]:
    """The ground truth per run: best step and joint hit with its interval, and its noise."""
    lines = ["", "## Ground truth: the checkpoint a person would pick", "",
             f"Objective: the **joint hit** on {settings['truth_prompts']} truth prompts (the test prompts' set, "
             "extended; image k from latent seed k): the share of images judged to be in the style *and* with the "
             "colour, floors and time asked for (trilora/toy/truth.py says why this objective). Best = the checkpoint "
             "with the highest joint hit; interval = 95 % bootstrap over prompts (paired: one resampling for all "
             "checkpoints of a run); stable = share of bootstrap draws whose best is the same checkpoint; within "
             "5 % = checkpoints with a joint hit at least 95 % of the best (any of them is a hit).", "",
             "| method | rank | seed | best step | joint hit at best | interval | stable | mean interval width "
             "| checkpoints within 5 % | joint hit at the end |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for run in runs:
        t = run["truth"]
        i = t["steps"].index(t["best_step"])
        width = sum(h - lo for h, lo in zip(t["high"], t["low"], strict=True)) / len(t["steps"])
        good = sum(within(v, t["best"]) for v in t["joint"])
        lines.append(f"| {run['method']} | {run['rank']} | {run['seed']} | {t['best_step']} | {t['best']:.3f} | "
                     f"{t['low'][i]:.3f}–{t['high'][i]:.3f} | {t['best_stable']:.0%} | {width:.3f} | {good} of "
                     f"{len(t['steps'])} | {t['joint'][-1]:.3f} |")  # fmt: skip
    return lines


def rules_markdown(summary: dict, settings: dict) -> list[str]:
    if not summary or not summary.get("rules"):
        return []
    held = any("held_out" in s for s in summary["rules"].values())
    group = "held_out" if held else "tune"
    tuned = "seed 0" if summary["tune_seeds"] == 1 else f"seeds 0–{summary['tune_seeds'] - 1}"
    split = (f"Rules are tuned on {tuned} and reported on the held-out seeds (the "
             "default is chosen on the tuning seeds alone)" if held else "No held-out seeds in this bench: every run "
             "tunes and reports")  # fmt: skip
    lines = ["", "## Stopping rules", "",
             f"Each rule replayed on the same runs (trilora/toy/stopping.py says what each signal is). Hit: the exported "
             "checkpoint's joint hit is within 5 % of the run's best; hit probability: the share of bootstrap draws in "
             "which it is (how much of a hit is luck); given away: best joint hit minus the exported one; FID hits: "
             "toy FID within 5 % of the run's lowest (the earlier criterion); cost: all UNet evaluations (training and "
             f"validations) over the training's own. {split}.", "",
             f"| rule | tuning hits | held-out hits | {'held-out ' if held else ''}hit probability | joint hit given away "
             "| steps trained | cost | FID hits (all runs) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, s in summary["rules"].items():
        tune, shown = s.get("tune"), s.get(group)
        fid_hits = sum(g["fid_hits"] for g in s.values())
        runs = sum(g["runs"] for g in s.values())
        mark = " (default)" if name == summary["default"] else ""
        lines.append(f"| `{name}`{mark} | {_count(tune)} | {_count(s.get('held_out'))} | "
                     f"{_stat(shown['hit_probability'], '.0%')} | {_stat(shown['given_away'], '.3f')} | "
                     f"{_stat(shown['steps_trained'], '.0f')} | {_stat(shown['cost'], '.2f')}× | {fid_hits} of {runs} |")  # fmt: skip
    d = summary["default"]
    if d is not None:
        s = summary["rules"][d][group]
        share = s["hits"] / s["runs"]
        lines += ["", f"**Default**: `{d}`, chosen on the tuning runs. On the {'held-out ' if held else ''}runs it "
                  f"exports a checkpoint within 5 % of the best in {s['hits']} of {s['runs']} ({share:.0%}; goal: 90 %) "
                  f"at {s['cost']['mean']:.2f}× the training's UNet evaluations (goal: at most 2×)."]  # fmt: skip
    return lines


def _count(group: dict | None) -> str:
    return "–" if group is None else f"{group['hits']} of {group['runs']}"


def _stat(stat: dict, spec: str) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:{spec}}" + ("" if stat["std"] is None else f" ± {stat['std']:{spec}}")


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
