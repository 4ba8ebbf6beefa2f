"""Generate images for toy-world prompts and score them with the judge.

The protocol is fixed so that numbers compare across runs: prompt k of a set is rendered from
latent seed `seed + k`, with the pipeline's scheduler, `steps` steps and classifier-free guidance.
"""

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from trilora.sampling import sample_images
from trilora.toy.judge import EVAL_SEED_START, Judge
from trilora.toy.metrics import attribute_accuracy, toy_fid
from trilora.toy.world import BASE_STYLES, Attributes, caption, render, render_dataset, sample_attributes

STEPS = 20
GUIDANCE = (
    3.0  # classifier-free guidance of the toy protocol: above ~4 the shipped base oversaturates colours
)
# The adapter task of the demo and the benchmark: a style the base model never saw, shown in only
# three wall colours; test prompts ask for all eight, so overfitting shows as lost colour fidelity.
ADAPTER_STYLE = "onion"
ADAPTER_COLOURS = ("red", "blue", "white")
SIGNAL_SEED = 3  # the held-out prompts of the generation stopping signal (the bench's, and the demo's)


def adapter_dataset(
    folder, count: int = 30, seed: int = 0, colours: Sequence[str] = ADAPTER_COLOURS
) -> list[Attributes]:
    """The adapter training set: `count` renders of ADAPTER_STYLE in `colours` with captions."""
    return render_dataset(folder, count, seed, styles=(ADAPTER_STYLE,), colours=tuple(colours))


def prompt_set(count: int, styles: Sequence[str] = BASE_STYLES, seed: int = 0) -> list[Attributes]:
    """`count` random attributes (all colours, floors and times) among `styles`; the same for the same seed."""
    rng = random.Random(seed)
    return [sample_attributes(rng, tuple(styles)) for _ in range(count)]


def generate_images(
    pipe,
    wanted: Sequence[Attributes],
    seed: int = 0,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    batch_size: int = 50,
) -> list[Image.Image]:
    """One image per prompt; image k from a latent drawn with seed `seed + k` (independent of batching)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return sample_images(pipe, [caption(a) for a in wanted], [seed + k for k in range(len(wanted))], steps, guidance,
                         size, size, batch_size=batch_size)  # fmt: skip


def reference_renders(wanted: Sequence[Attributes], seed: int = 0) -> list[Image.Image]:
    """Fresh renders of the same prompts, from render seeds no training set uses."""
    return [render(a, EVAL_SEED_START + 7919 * seed + k) for k, a in enumerate(wanted)]


def nearest_distance(images: Sequence[Image.Image], training: Sequence[Image.Image]) -> list[float]:
    """For each image, the RMS pixel distance (0..1) to its nearest training image: small means copied."""
    a = _pixels(images)
    b = _pixels(training)
    squared = (a * a).sum(1, keepdims=True) - 2 * a @ b.T + (b * b).sum(1)[None]
    return np.sqrt(np.maximum(squared.min(axis=1), 0) / a.shape[1]).tolist()


def score(
    judge: Judge,
    images: Sequence[Image.Image],
    wanted: Sequence[Attributes],
    reference: Sequence[Image.Image] | None = None,
    training: Sequence[Image.Image] | None = None,
    seen_colours: Sequence[str] | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy ("style" is the style hit rate), prompt fidelity (colour, floors and
    time all right: our CLIP-score analogue), toy FID against `reference`, the mean nearest-
    training-image distance when `training` is given, and fidelity on the prompts in `seen_colours`
    and on the others when those are given."""
    predicted = judge.predict(list(images))
    accuracy = attribute_accuracy(predicted, list(wanted))
    hits = [
        (p.colour, p.floors, p.time) == (w.colour, w.floors, w.time)
        for p, w in zip(predicted, wanted, strict=True)
    ]
    result = {**accuracy, "fidelity": sum(hits) / len(hits)}
    if seen_colours is not None:  # fidelity on the training colours, and on the others (generalisation)
        for name, keep in (("fidelity_seen", True), ("fidelity_unseen", False)):
            chosen = [h for h, w in zip(hits, wanted, strict=True) if (w.colour in seen_colours) == keep]
            result[name] = sum(chosen) / len(chosen) if chosen else float("nan")
    if reference is not None:
        result["fid"] = toy_fid(judge.features(list(images)), judge.features(list(reference)))
    if training is not None:
        result["nearest"] = float(np.mean(nearest_distance(images, training)))
    return result


def _pixels(images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(i.convert("RGB"), dtype=np.float32).ravel() / 255 for i in images])
