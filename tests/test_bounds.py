"""Bounds on the config tree's fields (issue 19): generated values for every setting either build
(finite, within the field's declared range, of its type) or give one UserError line; nothing else
ever comes out. --help shows each range, and the whole --config file is checked."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trilora.cli import build_parser, tree_from_args
from trilora.config import tree_from_dict
from trilora.config.commands import Tree
from trilora.config.fields import base_type, iter_fields
from trilora.errors import UserError

NUMBER_FIELDS = [(section, spec) for section, spec, annotation in iter_fields(Tree)
                 if base_type(annotation) in (int, float) and section is not None]  # fmt: skip
ANY_VALUE = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=5) | st.booleans()
             | st.none() | st.lists(st.floats(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))  # fmt: skip


def test_every_number_of_the_tree_declares_its_bounds():
    missing = [f"{section}.{spec.name}" for section, spec in NUMBER_FIELDS
               if spec.metadata["low"] is None or spec.metadata["high"] is None]  # fmt: skip
    assert missing == []


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(NUMBER_FIELDS), value=ANY_VALUE)
def test_a_generated_value_builds_within_bounds_or_is_one_line(field, value):
    section, spec = field
    try:
        tree = tree_from_dict({section: {spec.name: value}}, "generated.toml", "train")
    except UserError as error:
        assert "\n" not in str(error) and f"{section}.{spec.name}" in str(error)
        return
    built = getattr(getattr(tree, section), spec.name)
    for item in built if isinstance(built, list) else [built]:
        if item is None:
            continue
        assert math.isfinite(item) and spec.metadata["low"] <= item <= spec.metadata["high"]


@settings(max_examples=150, deadline=None)
@given(value=st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "1e30", "abc", "99999999999999999999"]),
       flag=st.sampled_from(["--rank", "--lr", "--resolution", "--val-timesteps", "--sample-steps", "--batch-size",
                             "--seed", "--ema", "--noise-offset", "--min-delta", "--patience", "--steps"]))  # fmt: skip
def test_a_flag_value_is_checked_and_named_by_its_flag(value, flag):
    parser = build_parser()
    try:
        args = parser.parse_args(["train", f"{flag}={value}"])
    except SystemExit:  # argparse's own type check: a usage line and exit 2
        return
    try:
        tree = tree_from_args(args)[0]
    except UserError as error:
        assert str(error).startswith(flag) and "\n" not in str(error)
        return
    assert dataclasses.is_dataclass(tree)


def test_help_shows_the_range():
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "range 1..1024" in help_text and "range 8..4096" in help_text


@pytest.mark.parametrize("line", ['rank = "x"', "rank = 0", "rank = nan", "rank = 1e9"])
def test_the_whole_config_file_is_checked_whatever_the_flags(tmp_path, line):
    toml = tmp_path / "run.toml"
    toml.write_text(f"[adapter]\n{line.replace('rank = nan', 'dropout = nan')}\n")
    args = build_parser().parse_args(["train", "--config", str(toml), "--rank", "4", "--dropout", "0"])
    with pytest.raises(UserError, match=str(toml)):
        tree_from_args(args)


SECTIONS = [name for name in ("model", "data", "adapter", "train", "validation", "checkpoint", "export", "sampling",
                              "generate", "evaluate", "compare", "bench", "demo", "caption", "ui")]  # fmt: skip
KEYS = sorted({spec.name for _, spec, _ in iter_fields(Tree)}) + ["unknown", "a\nb"]
TEXT = st.text(alphabet=st.sampled_from(["a", "/", "\0", "\n", ".", "é"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(data=st.dictionaries(st.sampled_from(SECTIONS + ["output", "x"]),
                            st.dictionaries(st.sampled_from(KEYS), ANY_VALUE | TEXT, max_size=4) | ANY_VALUE, max_size=4),
       command=st.sampled_from(["train", "generate", "evaluate", "caption", "ui"]))  # fmt: skip
def test_any_settings_file_builds_or_is_one_user_error(data, command):
    """What a --config file (TOML or a run's JSON) holds, generated: the tree builds, or one UserError."""
    from trilora.errors import one_line

    try:
        tree = tree_from_dict(data, "generated.toml", command)
        for section in (
            tree.run_config(),
            tree.sampling,
            tree.generate,
            tree.evaluate,
            tree.caption,
            tree.ui,
        ):
            section.validate()  # what each command checks next (paths' existence, relations)
    except UserError as error:
        assert "\n" not in one_line(error)
        return
    assert isinstance(tree, Tree)
