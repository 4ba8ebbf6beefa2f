"""The toy world's scorer for the generation stopping signal: the judge's share of images with
style, colour, floors and time all as asked (the long toy bench's signal)."""

from collections.abc import Callable

from trilora.toy.base import TOY_UNET
from trilora.toy.judge import load_judge
from trilora.toy.metrics import attribute_accuracy
from trilora.toy.world import parse_caption


def is_toy_world(unet) -> bool:
    """Whether a UNet has the toy world's architecture (its images are what the judge reads)."""

    def plain(value):
        return list(value) if isinstance(value, tuple | list) else value

    return all(plain(unet.config.get(key)) == plain(value) for key, value in TOY_UNET.items())


def toy_scorer(prompts: list[str]) -> Callable | None:
    """(images, prompts) -> the judge's share of images with every attribute as asked; None if a
    prompt is not a toy caption."""
    try:
        wanted = [parse_caption(p) for p in prompts]
    except ValueError:
        return None
    judge = load_judge()
    return lambda images, _: attribute_accuracy(judge.predict(images), wanted)["all"]
