import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trilora.data.captions import split_tags, transform_caption

# A tag: any text without a comma, non-empty once stripped.
tags_strategy = st.lists(
    st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1)
    .map(str.strip)
    .filter(bool),
    min_size=1,
    max_size=12,
)


@st.composite
def captions(draw):
    """(caption, tags): the tags written with messy separators, stray spaces and empty tags."""
    tags = draw(tags_strategy)
    parts = []
    for tag in tags:
        parts.append(draw(st.sampled_from(["", " ", "  ", "\t"])) + tag + draw(st.sampled_from(["", " "])))
        if draw(st.booleans()):
            parts.append(" ")  # an empty tag, as in "a,  , b"
    return ",".join(parts), tags


@given(captions(), st.integers(0, 2**32), st.booleans(), st.integers(0, 15), st.floats(0.0, 0.999))
def test_tags_are_a_permutation_with_the_first_keep_tokens_in_place(case, seed, shuffle, keep, dropout):
    caption, tags = case
    out = transform_caption(caption, random.Random(seed), shuffle, keep, dropout)
    if out == "":
        return  # dropped
    out_tags = out.split(", ")
    assert Counter(out_tags) == Counter(tags)
    assert out_tags[:keep] == tags[:keep]
    if not shuffle:
        assert out_tags == tags


@given(captions(), st.integers(0, 2**32), st.booleans(), st.integers(0, 15))
def test_dropout_zero_never_empties_and_one_always_does(case, seed, shuffle, keep):
    caption, _ = case
    assert transform_caption(caption, random.Random(seed), shuffle, keep, 0.0) != ""
    assert transform_caption(caption, random.Random(seed), shuffle, keep, 1.0) == ""


@given(captions(), st.integers(0, 2**32), st.integers(0, 15), st.floats(0.0, 1.0))
def test_same_seed_same_caption_and_documented_draw_order(case, seed, keep, dropout):
    caption, tags = case
    rng = random.Random(seed)
    out = transform_caption(caption, rng, True, keep, dropout)
    assert out == transform_caption(caption, random.Random(seed), True, keep, dropout)

    # The docstring's order: one random() for dropout, then one shuffle of the tags after `keep`.
    replay = random.Random(seed)
    if replay.random() < dropout:
        expected = ""
    else:
        rest = tags[keep:]
        replay.shuffle(rest)
        expected = ", ".join(tags[:keep] + rest)
    assert out == expected
    assert rng.getstate() == replay.getstate()


def test_dropout_setting_does_not_shift_the_shuffle():
    caption = "mystyle, a, b, c, d, e, f, g"
    seeds = [s for s in range(50) if random.Random(s).random() >= 0.3]  # seeds not dropped at 0.3
    for seed in seeds:
        assert transform_caption(caption, random.Random(seed), True, 1, 0.3) == transform_caption(
            caption, random.Random(seed), True, 1, 0.0
        )


def test_shuffle_changes_the_order_and_keeps_the_trigger_first():
    caption = "mystyle, a red house, by the sea, at dusk, oil painting"
    rng = random.Random(0)
    outs = {transform_caption(caption, rng, True, 1, 0.0) for _ in range(200)}
    assert len(outs) == 24  # every order of the 4 shuffled tags appears
    assert all(out.startswith("mystyle, ") for out in outs)


def test_dropout_rate_is_respected():
    rng = random.Random(0)
    dropped = sum(transform_caption("a, b", rng, False, 0, 0.25) == "" for _ in range(4000))
    assert 850 < dropped < 1150  # 1000 expected; sd ~ 27


def test_whitespace_and_empty_tags_are_normalised():
    rng = random.Random(0)
    assert transform_caption("  a ,b,, \tc d  ,", rng, False, 0, 0.0) == "a, b, c d"
    assert transform_caption("   ", rng, True, 1, 0.0) == ""
    assert split_tags("x,  y ,") == ["x", "y"]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="keep_tokens"):
        transform_caption("a", random.Random(0), True, -1, 0.0)
    with pytest.raises(ValueError, match="dropout"):
        transform_caption("a", random.Random(0), True, 0, 1.5)
