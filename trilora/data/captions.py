"""Caption augmentation as kohya's trainer does it: shuffled tags and caption dropout.

A caption is read as comma-separated tags ("mystyle, a house, by the sea" has three). With
`--shuffle-captions` the tags are shuffled each time the image is seen, except the first
`--keep-tokens N`, which stay in place: the trigger word is the first tag, so N = 1 keeps it first.
With `--caption-dropout P` the caption is replaced by "" with probability P, which teaches the
model the unconditional prediction that classifier-free guidance needs.
"""

import random


def split_tags(caption: str) -> list[str]:
    """The comma-separated tags of a caption, stripped of surrounding whitespace; empty tags dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def transform_caption(
    caption: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout: float
) -> str:
    """The caption to train on this time: dropped with probability `dropout`, else its tags, maybe shuffled.

    The result is always the tags joined with ", " (so whitespace around tags is normalised and
    empty tags vanish), or "" when dropped. Draws from `rng`, in this order, so a seeded run is
    reproducible:

    1. one `rng.random()`, always, even when `dropout` is 0 (so the draws after it do not depend
       on the dropout setting); the caption is dropped when it is below `dropout`, and nothing
       more is drawn;
    2. when `shuffle`, one `rng.shuffle` of the tags after the first `keep_tokens`.
    """
    if keep_tokens < 0:
        raise ValueError(f"keep_tokens must be >= 0, got {keep_tokens}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    if rng.random() < dropout:
        return ""
    tags = split_tags(caption)
    if shuffle:
        kept, rest = tags[:keep_tokens], tags[keep_tokens:]
        rng.shuffle(rest)
        tags = kept + rest
    return ", ".join(tags)
