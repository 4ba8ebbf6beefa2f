"""trilora/files.py: a write either replaces the file whole or leaves the previous one as it was."""

import json

import pytest
from PIL import Image

from trilora.files import atomic_path, save_image, write_json, write_text


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"best_step": 3})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as temporary:
            temporary.write_text('{"best_st')
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"best_step": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_temporaries_keep_the_extension_and_are_hidden(tmp_path):
    with atomic_path(tmp_path / "grid.png") as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".grid.")
        assert temporary.suffix == ".png"  # PIL and matplotlib choose the format from it
    save_image(Image.new("RGB", (4, 4), "red"), tmp_path / "sub" / "a.png")
    with Image.open(tmp_path / "sub" / "a.png") as image:
        assert image.format == "PNG" and image.getpixel((0, 0)) == (255, 0, 0)
    write_text(tmp_path / "a.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "grid.png", "sub"]
