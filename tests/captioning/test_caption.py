"""`trilora caption` on a real-looking folder (mixed sizes, a broken file, existing captions, a
repeat subfolder) with a tiny BLIP, a tiny WD14-shaped tagger and the toy world's captioner."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trilora.captioning.tagger import spoken
from trilora.captioning.tiny import save_tiny_blip, save_tiny_tagger
from trilora.cli import main


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "blip")


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "tagger")


@pytest.fixture
def folder(tmp_path):
    """Six images: four sizes and modes, one in a `10_` repeat folder, one with a caption already,
    one with an empty caption file, and a file that is not an image at all."""
    root = tmp_path / "images"
    (root / "10_red").mkdir(parents=True)
    Image.new("RGB", (64, 40), "red").save(root / "wide_red.png")
    Image.new("RGB", (30, 90), "blue").save(root / "tall_blue.jpg")
    Image.new("L", (50, 50), 128).save(root / "grey.webp")
    Image.new("RGBA", (48, 48), (255, 0, 0, 128)).save(root / "10_red" / "alpha.png")
    Image.new("RGB", (32, 32), "green").save(root / "captioned.png")
    (root / "captioned.txt").write_text("my own words\n")
    Image.new("RGB", (32, 32), "blue").save(root / "empty_caption.png")
    (root / "empty_caption.txt").write_text("")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def captions(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.txt"))}


WRITTEN = {"wide_red.txt", "tall_blue.txt", "grey.txt", "10_red/alpha.txt", "empty_caption.txt"}


def test_blip_writes_the_missing_captions_and_keeps_the_rest(blip_dir, folder, capsys):
    args = [
        "caption",
        str(folder),
        "--model",
        str(blip_dir),
        "--beams",
        "2",
        "--min-length",
        "2",
        "--max-length",
        "8",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    first = captions(folder)
    assert set(first) == WRITTEN | {"captioned.txt"}
    assert first["captioned.txt"] == "my own words\n"  # an existing caption is kept
    assert all(first[name].strip() and first[name].endswith("\n") for name in WRITTEN)
    assert "5 written, 1 kept" in out and "1 skipped" in out and "broken.png" in out
    assert not (folder / "broken.txt").exists()

    assert main(args) == 0  # a rerun finds nothing to do
    assert "0 written, 6 kept" in capsys.readouterr().out and captions(folder) == first

    assert main([*args, "--overwrite", "--prefix", "sks"]) == 0  # deterministic, the trigger word first
    again = captions(folder)
    assert again["captioned.txt"].startswith("sks, ")
    assert all(again[name] == f"sks, {first[name]}" for name in WRITTEN)


def test_blip_conditional_text_starts_the_caption(blip_dir, folder):
    assert (
        main(["caption", str(folder), "--model", str(blip_dir), "--text", "a photo of", "--max-length", "10"])
        == 0
    )
    assert all(text.startswith("a photo of") for name, text in captions(folder).items() if name in WRITTEN)


def test_tagger_reads_bgr_thresholds_and_writes_tags(tagger_dir, folder, capsys):
    assert main(["caption", str(folder), "--model", str(tagger_dir)]) == 0
    found = captions(folder)
    # character tags first, then general tags by confidence; underscores become spaces, not in ^_^;
    # the rating tag is never written; a red image is red only if the channels are given as BGR
    assert found["wide_red.txt"] == "hatsune miku, red background, ^_^, long hair\n"
    assert found["tall_blue.txt"] == "hatsune miku, blue background, ^_^, long hair\n"
    assert "most common: hatsune miku (5)" in capsys.readouterr().out

    flags = ["--overwrite", "--general-threshold", "0.5", "--character-threshold", "0.95",
             "--undesired-tags", "red background,^_^", "--keep-underscores"]  # fmt: skip
    assert main(["caption", str(folder), "--model", str(tagger_dir), *flags]) == 0
    assert captions(folder)["wide_red.txt"] == "red_background\n"  # undesired: compared as spoken


def test_spoken_tags():
    assert [spoken(t) for t in ("long_hair", "^_^", ">_<", "1girl")] == ["long hair", "^_^", ">_<", "1girl"]


def test_toy_captioner_reads_renders_in_the_worlds_words(tmp_path):
    from trilora.toy.evaluate import adapter_dataset

    adapter_dataset(tmp_path, 12, seed=3)
    truth = captions(tmp_path)
    for path in tmp_path.glob("*.txt"):
        path.unlink()
    assert main(["caption", str(tmp_path), "--model", "toy"]) == 0
    assert captions(tmp_path) == truth


def refused(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "trilora", "caption", *map(str, args)], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("trilora: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow  # six CLI subprocesses
def test_bad_models_and_folders_are_one_line_and_write_nothing(folder, tmp_path, tiny_model_dir):
    before = captions(folder)
    assert "hf download Salesforce/blip-image-captioning-large" in refused(
        folder, "--model", tmp_path / "nowhere"
    )
    (tmp_path / "half_tagger").mkdir()
    (tmp_path / "half_tagger" / "model.onnx").write_bytes(b"")
    assert "no selected_tags.csv" in refused(folder, "--model", tmp_path / "half_tagger")
    assert "UNet2DConditionModel" in refused(folder, "--model", tiny_model_dir / "unet")
    assert "no captioning model" in refused(folder)
    assert "data folder not found" in refused(tmp_path / "missing", "--model", "toy")
    assert re.search(r"--min-length <= --max-length", refused(folder, "--model", "toy", "--min-length", "9",
                                                              "--max-length", "3"))  # fmt: skip
    assert captions(folder) == before


def test_check_data_counts_missing_captions_and_names_the_command(folder, capsys):
    assert main(["check-data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"5 images have no caption: `trilora caption {folder} --model PATH`" in out


# The demo on auto-captions (the seed workflow in the toy world) is tests/toy/test_base.py's end-to-end test.
