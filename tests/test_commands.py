"""Every command's flags come from the config tree, `--config FILE` works for each, and the
settings.toml that commands save beside their outputs reads back to the same settings."""

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trilora.cli import main
from trilora.config import COMMANDS, Tree, command_settings, load_toml, to_toml, tree_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def help_flags(capsys, command: str) -> set[str]:
    """The option names `trilora COMMAND --help` lists (its left column, not flags named in help texts)."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    return {flag for line in out.splitlines() for flag in re.findall(r"--[a-z0-9-]+", line.split("  ")[1] if
            line.startswith("  -") else "")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_exactly_the_commands_settings(capsys, name):
    command = COMMANDS[name]
    wanted = {"--help", "--config"} | {f"--{mode.replace('_', '-')}" for mode in command.modes}
    sections = {None: Tree} | {
        f.name: f.default_factory for f in dataclasses.fields(Tree) if f.name != "output"
    }
    for section, names in command.sections.items():
        for spec in dataclasses.fields(sections[section]):
            key = f"{section}.{spec.name}" if section else spec.name
            if names is not None and spec.name not in names:
                continue
            if key in command.except_ or key in command.positional:
                continue
            flag = "--" + command.flags.get(key, spec.name.replace("_", "-"))
            wanted |= (
                {flag, flag.replace("--", "--no-", 1)} if spec.type in ("bool", "bool | None") else {flag}
            )
    assert help_flags(capsys, name) == wanted


def readme_commands() -> list[tuple[str, set[str]]]:
    """(command, its flags) of every `trilora COMMAND ...` line in the README (continuations joined)."""
    text = README.read_text().replace("\\\n", " ")
    found = []
    for match in re.finditer(r"trilora ([a-z-]+)((?: [^`\n|]*)?)", text):
        command, rest = match.group(1), match.group(2)
        if command in COMMANDS:
            found.append((command, set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))))
    return found


def test_every_flag_in_the_readme_still_works(capsys):
    commands = readme_commands()
    assert {c for c, _ in commands} >= {"train", "generate", "evaluate", "compare", "check-data", "bench"}
    known = {name: help_flags(capsys, name) for name in COMMANDS}
    for command, flags in commands:
        assert flags <= known[command], (command, flags - known[command])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_config_file_with_an_unknown_key_is_refused_by_name(capsys, tmp_path, name):
    path = tmp_path / "settings.toml"
    path.write_text("[sampling]\nsteps = 3\n[generate]\nstepz = 3\n[nonsense]\nx = 1\n")
    assert main([name, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "generate.stepz" in err and "nonsense" in err and "sampling.steps" not in err and "\n" not in err


@pytest.mark.parametrize(
    "name, toml, message",
    [
        ("demo", "[demo]\nsteps = 0\n", "demo.steps must be at least 1"),
        (
            "bench",
            "[bench]\nsteps = 7\neval_every = 3\n",
            "--steps (7) must be a multiple of --eval-every (3)",
        ),
        (
            "generate",
            '[generate]\nprompt = "a cat"\n[sampling]\nheight = 33\n',
            "--height must be a positive",
        ),
        ("evaluate", "[evaluate]\nkid_subsets = 0\n", "evaluate.kid_subsets must be at least 1"),
        ("compare", '[compare]\nmethods = ["lora", "lora"]\n', "--methods must be distinct"),
        ("train", "[train]\nlr = -1.0\n", "train.lr must be at least"),
    ],
)
def test_config_file_values_reach_the_command(capsys, tmp_path, name, toml, message):
    """A value given only in the file is the one the command checks (and refuses here)."""
    path = tmp_path / "settings.toml"
    path.write_text(toml)
    assert main([name, "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_check_data_reads_its_folder_from_the_config(capsys, tmp_path):
    from trilora.base.tiny import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", count=3, seed=1)
    path = tmp_path / "run.toml"
    path.write_text(
        f'[data]\ndata = "{data}"\nresolution = 32\n[train]\nlr = 0.5\n'
    )  # other sections are fine
    assert main(["check-data", "--config", str(path), "--json"]) == 0
    assert '"usable": 3' in capsys.readouterr().out


def test_flags_override_the_config_file(tmp_path):
    from trilora.cli import build_parser, tree_from_args

    path = tmp_path / "s.toml"
    path.write_text("[sampling]\nsteps = 3\nseed = 5\n[evaluate]\nstrengths = [0, 1]\n")
    args = build_parser().parse_args(
        ["evaluate", "--config", str(path), "--seed", "6", "--strengths", "0.5,1"]
    )
    tree = tree_from_args(args)[0]
    assert (tree.sampling.steps, tree.sampling.seed, tree.evaluate.strengths) == (3, 6, [0.5, 1.0])


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
path_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)  # a path holds no NUL


@settings(max_examples=50, deadline=None)
@given(
    prompt=text, lora=st.lists(path_text, max_size=3), seed=st.integers(0, 2**31), guidance=st.floats(0, 30)
)
def test_saved_settings_read_back_to_the_same_settings(tmp_path_factory, prompt, lora, seed, guidance):
    data = {"model": {"base": "m"}, "sampling": {"seed": seed, "guidance": guidance},
            "generate": {"prompt": prompt, "lora": lora, "output": "o"}}  # fmt: skip
    tree = tree_from_dict(data, "test", "generate")
    saved = to_toml(command_settings(tree, "generate"), header="a\nb")
    path = tmp_path_factory.mktemp("toml") / "settings.toml"
    path.write_text(saved, encoding="utf-8")
    again = tree_from_dict(load_toml(path), str(path), "generate")
    assert command_settings(again, "generate") == command_settings(tree, "generate")


def test_saved_settings_leave_out_how_a_command_was_started():
    tree = tree_from_dict({"evaluate": {"overwrite": True}, "checkpoint": {"resume": "x", "overwrite": True}},
                          "test", "train")  # fmt: skip
    assert "overwrite" not in command_settings(tree, "evaluate")["evaluate"]
    assert set(command_settings(tree, "train")["checkpoint"]) == {
        "checkpoint_every",
        "keep_checkpoints",
        "keep_adapters",
    }


def test_flags_are_unique_within_each_command():
    for command in COMMANDS.values():
        flags = [flag for *_, flag in command.fields()]
        assert len(flags) == len(set(flags)), command.name
