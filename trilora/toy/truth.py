"""The long bench's ground truth: which checkpoint of a run a person would pick, and how sure we are.

The objective is one number per checkpoint: the **joint hit**, the share of test images that are in
the new style *and* show the colour, floors and time the prompt asked for (the judge reads both). A
style LoRA is kept for images of its style that still obey the prompt: an image that misses either
is a failure, so the joint hit counts each image once, needs no tolerance to tune, and falls when
the adapter overfits (fidelity on unseen colours goes) as well as when it has not learnt yet (style).

It is measured on many test prompts (`trilora bench toy --truth-prompts`), each from its own latent
seed, the same prompts and seeds for every checkpoint. Its noise is measured by the bootstrap over
prompts: a draw resamples the prompts once for all checkpoints of a run (the comparison between
checkpoints is paired), giving each checkpoint's interval and how often the best checkpoint stays
the best. A rule "hits" a run when its checkpoint's joint hit is at least 95 % of the run's best.
Pure functions on lists of 0/1 hits.
"""

import random
from collections.abc import Sequence

from trilora.toy.world import Attributes

WITHIN = 0.95  # a checkpoint within 5 % of the best: joint hit >= 0.95 x the run's highest
DRAWS = 1000


def prompt_hits(predicted: Sequence[Attributes], wanted: Sequence[Attributes]) -> dict[str, list[int]]:
    """Per prompt, 1 where the judge sees the style asked for, and 1 where it sees the colour, floors
    and time asked for (fidelity)."""
    pairs = list(zip(predicted, wanted, strict=True))
    return {
        "style": [int(p.style == w.style) for p, w in pairs],
        "fidelity": [int((p.colour, p.floors, p.time) == (w.colour, w.floors, w.time)) for p, w in pairs],
    }


def joint(hits: dict[str, list[int]], rows: Sequence[int] | None = None) -> float:
    """The joint hit of one checkpoint: the share of prompts (`rows`, default all) with style and fidelity both right."""
    rows = range(len(hits["style"])) if rows is None else rows
    return sum(hits["style"][i] * hits["fidelity"][i] for i in rows) / len(rows)


def best_index(values: Sequence[float]) -> int:
    """The first checkpoint with the highest value."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def within(value: float, best: float) -> bool:
    return value >= WITHIN * best


def bootstrap(
    checkpoints: Sequence[dict[str, list[int]]], draws: int = DRAWS, seed: int = 0
) -> list[list[float]]:
    """`draws` resamplings of the prompts, each applied to every checkpoint: [draw][checkpoint] joint hits."""
    n = len(checkpoints[0]["style"])
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        rows = [rng.randrange(n) for _ in range(n)]
        out.append([joint(c, rows) for c in checkpoints])
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_truth(checkpoints: Sequence[dict[str, list[int]]], steps: Sequence[int], draws: int = DRAWS) -> dict:
    """A run's ground truth: each checkpoint's joint hit with its 95 % interval, the best step, how often
    each draw's best is the same step (stability) and how often it is within 5 % of the full sample's
    best (so that a rule's hit is not luck), and the draws themselves (for `hit_probability`)."""
    values = [joint(c) for c in checkpoints]
    best = best_index(values)
    samples = bootstrap(checkpoints, draws)
    columns = list(zip(*samples, strict=True))
    return {
        "steps": list(steps),
        "joint": values,
        "low": [percentile(col, 0.025) for col in columns],
        "high": [percentile(col, 0.975) for col in columns],
        "best_step": steps[best],
        "best": values[best],
        "best_stable": sum(best_index(s) == best for s in samples) / draws,
        "draws": samples,
    }


def hit_probability(truth: dict, step: int) -> float:
    """Over the bootstrap draws: how often the checkpoint at `step` is within 5 % of that draw's best."""
    i = truth["steps"].index(step)
    return sum(within(s[i], max(s)) for s in truth["draws"]) / len(truth["draws"])
