"""The toy world's scorer for the generation stopping signal: the judge's style hit times its
prompt fidelity (colour, floors and time all as asked), each the share of the held-out prompts'
images: the long toy bench's `generation_split`, the signal of the rule it chose as the default."""

from collections.abc import Callable

from trilora.toy.base import TOY_UNET
from trilora.toy.evaluate import score
from trilora.toy.judge import load_judge
from trilora.toy.world import parse_caption


def is_toy_world(unet) -> bool:
    """Whether a UNet has the toy world's architecture (its images are what the judge reads)."""

    def plain(value):
        return list(value) if isinstance(value, tuple | list) else value

    return all(plain(unet.config.get(key)) == plain(value) for key, value in TOY_UNET.items())


def toy_scorer(prompts: list[str]) -> Callable | None:
    """(images, prompts) -> the judge's style hit x fidelity on those images; None if a prompt is not
    a toy caption."""
    try:
        wanted = [parse_caption(p) for p in prompts]
    except ValueError:
        return None
    judge = load_judge()

    def split(images, _):
        scores = score(judge, images, wanted)
        return scores["style"] * scores["fidelity"]

    return split
