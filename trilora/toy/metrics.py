"""Scores for images generated in the toy world: attribute accuracy, toy FID and NFID.

Pure functions on tensors and attribute lists; the features come from the toy judge
(`trilora.toy.judge.Judge.features`), the attributes from `Judge.predict`.

The toy FID is FID's formula (trilora/evaluation/fid.py) on the judge's 128-d features; NFID
divides a model's toy FID by its base model's on the same prompts, as in the TriLoRA paper.
"""

from collections.abc import Sequence

from trilora.evaluation.fid import feature_statistics, frechet_distance, nfid
from trilora.evaluation.fid import fid as toy_fid
from trilora.toy.world import Attributes

__all__ = ["attribute_accuracy", "feature_statistics", "frechet_distance", "nfid", "toy_fid"]

ATTRIBUTE_NAMES = ("style", "colour", "floors", "time")


def attribute_accuracy(predicted: Sequence[Attributes], wanted: Sequence[Attributes]) -> dict[str, float]:
    """The fraction of images whose predicted style, colour, floors and time match what was asked for.

    Also "all": the fraction with all four right.
    """
    if len(predicted) != len(wanted) or not wanted:
        raise ValueError(
            f"need as many predictions as wanted attributes, at least one; got {len(predicted)} and {len(wanted)}"
        )
    right = {name: 0 for name in ATTRIBUTE_NAMES} | {"all": 0}
    for p, w in zip(predicted, wanted, strict=True):
        matches = [getattr(p, name) == getattr(w, name) for name in ATTRIBUTE_NAMES]
        for name, match in zip(ATTRIBUTE_NAMES, matches, strict=True):
            right[name] += match
        right["all"] += all(matches)
    return {name: count / len(wanted) for name, count in right.items()}
