from pathlib import Path

import pytest
from PIL import Image

from trilora.data.subsets import Subset, load_dataset_config, scan_subsets
from trilora.errors import UserError


def write_image(path, caption=None, extension=".txt"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    if caption is not None:
        path.with_suffix(extension).write_text(caption)
    return path


def write_config(tmp_path, text, name="dataset.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_and_scan_two_subsets(tmp_path):
    write_image(tmp_path / "img/style/a.png", "a house", ".caption")
    write_image(tmp_path / "img/style/3_more/b.png", "a boat", ".caption")
    write_image(tmp_path / "img/class/5_c/c.png", "a house")
    config = write_config(
        tmp_path,
        """
        [[subsets]]
        folder = "img/style"
        repeats = 10
        trigger = "mystyle"
        caption_extension = ".caption"

        [[subsets]]
        folder = "img/class"
        is_reg = true
        """,
    )
    subsets = load_dataset_config(config)
    assert subsets == [
        Subset(tmp_path / "img/style", 10, "mystyle", ".caption", False),
        Subset(tmp_path / "img/class", None, None, ".txt", True),
    ]
    items = {item.image.name: item for item in scan_subsets(subsets)}
    assert set(items) == {"a.png", "b.png", "c.png"}
    assert (items["a.png"].caption, items["a.png"].repeats, items["a.png"].is_reg) == (
        "mystyle, a house",
        10,
        False,
    )
    assert (items["b.png"].caption, items["b.png"].repeats) == ("mystyle, a boat", 10)  # overrides 3_more
    assert (items["c.png"].caption, items["c.png"].repeats, items["c.png"].is_reg) == ("a house", 5, True)


def test_relative_folders_resolve_against_the_config_folder(tmp_path, monkeypatch):
    write_image(tmp_path / "data/img/a.png")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = write_config(tmp_path / "data", '[[subsets]]\nfolder = "img"\n')
    assert load_dataset_config(config)[0].folder == tmp_path / "data/img"
    absolute = write_config(tmp_path / "elsewhere", f"[[subsets]]\nfolder = {str(tmp_path / 'data/img')!r}\n")
    assert load_dataset_config(absolute)[0].folder == tmp_path / "data/img"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[subsets]]\nfolder = "img"\nrepeat = 3\n', r"subset 1: unknown key\(s\) repeat;"),
        (
            '[[subsets]]\nfolder = "img"\nclass_tokens = "x"\n',
            r"class_tokens \(write class_tokens -> trigger\)",
        ),
        ('[[subsets]]\nfolder = "img"\n[general]\nx = 1\n', r"unknown key\(s\) general"),
        ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n', "not inside \\[\\[datasets\\]\\]"),
        (
            '[[subsets]]\nfolder = "img"\nrepeats = 0\n',
            "subset 1: repeats must be a whole number in 1..10000, got 0",
        ),
        ('[[subsets]]\nfolder = "img"\nrepeats = 2.5\n', "repeats must be a whole number"),
        ('[[subsets]]\nfolder = "img"\nrepeats = true\n', "repeats must be a whole number"),
        (
            '[[subsets]]\nfolder = "img"\ncaption_extension = "txt"\n',
            "caption_extension must be a dot",
        ),
        ('[[subsets]]\nfolder = "img"\nis_reg = "yes"\n', "is_reg must be true or false"),
        ('[[subsets]]\nfolder = "img"\ntrigger = 3\n', "trigger must be a string"),
        ('[[subsets]]\nfolder = "img"\n[[subsets]]\nfolder = "nope"\n', "subset 2: folder not found: .*nope"),
        ("[[subsets]]\nrepeats = 2\n", "subset 1: no folder"),
        ("x = 1\n", r"unknown key\(s\) x"),
        ("", "no subsets"),
        ('[[subsets]]\nfolder = "img"\nis_reg = true\n', "every subset is is_reg"),
        ("[[subsets]\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_one_line_user_errors(tmp_path, text, message):
    write_image(tmp_path / "img/a.png")
    config = write_config(tmp_path, text)
    with pytest.raises(UserError, match=message) as error:
        load_dataset_config(config)
    assert "\n" not in str(error.value)
    assert str(config) in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="dataset config not found"):
        load_dataset_config(tmp_path / "missing.toml")


def test_subset_accepts_a_string_folder_and_keeps_folder_repeats_by_default(tmp_path):
    write_image(tmp_path / "4_x/a.png")
    subset = Subset(str(tmp_path))
    assert subset.folder == Path(tmp_path)
    [item] = scan_subsets([subset])
    assert (item.repeats, item.is_reg, item.caption) == (4, False, "")
