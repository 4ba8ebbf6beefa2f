"""`trilora check-data` and training on one folder holding every kind of problem file."""

import io
import json
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from trilora.cli import main
from trilora.data.check import check_folder, format_report
from trilora.data.folder import load_images, scan

RESOLUTION = 64
# file -> the problem kinds check-data must report for it ([] for a clean file)
EXPECTED = {
    "zero.png": ["empty"],
    "half.png": ["truncated"],
    "half.jpg": ["truncated"],
    "text.png": ["not-an-image"],
    "bomb.png": ["too-many-pixels"],
    "cmyk.jpg": ["converted"],
    "deep.png": ["converted"],
    "palette.png": ["converted"],
    "rgba.png": ["converted"],
    "tiny.png": ["small"],
    "no_caption.png": ["caption-missing"],
    "empty_caption.png": ["caption-empty"],
    "latin1.png": ["caption-not-utf8"],
    "dup_a.png": [],
    "dup_b.png": [],
    "wide.png": [],
}
UNUSABLE = {"zero.png", "half.png", "half.jpg", "text.png", "bomb.png"}


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise(seed: int, size=(RESOLUTION, RESOLUTION)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for width x height RGB pixels, and no pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_problem_folder(folder):
    folder.mkdir()
    files = {
        "zero.png": b"",
        "half.png": encoded(noise(1))[: len(encoded(noise(1))) // 2],
        "half.jpg": encoded(noise(2), "JPEG")[: len(encoded(noise(2), "JPEG")) // 2],
        "text.png": b"a red square, not an image\n",
        "bomb.png": png_declaring(100_000, 100_000),
        "cmyk.jpg": encoded(
            Image.new("CMYK", (RESOLUTION, RESOLUTION), (0, 255, 255, 0)), "JPEG", quality=100
        ),
        "deep.png": encoded(Image.fromarray(np.full((RESOLUTION, RESOLUTION), 65535, dtype=np.uint16))),
        "rgba.png": encoded(Image.new("RGBA", (RESOLUTION, RESOLUTION), (255, 0, 0, 0))),
        "tiny.png": encoded(noise(3, (8, 8))),
        "no_caption.png": encoded(noise(4)),
        "empty_caption.png": encoded(noise(5)),
        "latin1.png": encoded(noise(6)),
        "dup_a.png": encoded(noise(7)),
        "dup_b.png": encoded(noise(7)),
        "wide.png": encoded(noise(8, (2 * RESOLUTION, RESOLUTION))),
    }
    palette = Image.new("P", (RESOLUTION, RESOLUTION), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    files["palette.png"] = encoded(palette, transparency=0)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        if name != "no_caption.png":
            tags = "photo, red square" if name.startswith(("dup", "wide", "tiny")) else "drawing"
            (folder / name).with_suffix(".txt").write_text(tags)
    (folder / "empty_caption.txt").write_text(" \n")
    (folder / "latin1.txt").write_bytes("café, photo".encode("latin-1"))
    assert set(files) == set(EXPECTED)
    return folder


@pytest.fixture(scope="module")
def problem_folder(tmp_path_factory):
    return make_problem_folder(tmp_path_factory.mktemp("check") / "data")


@pytest.fixture(scope="module")
def report(problem_folder):
    return check_folder(problem_folder, RESOLUTION, trigger="sks")


def test_report_lists_every_problem_with_its_reason(report):
    found = {name: [] for name in EXPECTED}
    for problem in report.problems:
        found[problem.file].append(problem.kind)
        assert problem.usable == (problem.file not in UNUSABLE)
    assert found == EXPECTED
    reasons = {p.file: p.reason for p in report.problems}
    assert reasons["zero.png"] == "empty file (0 bytes)"
    assert reasons["text.png"] == "not an image, despite its .png extension"
    assert reasons["half.png"].startswith("truncated") and reasons["half.jpg"].startswith("truncated")
    assert reasons["bomb.png"].startswith("too many pixels")
    assert reasons["cmyk.jpg"] == "CMYK converted to RGB"
    assert reasons["deep.png"] == "16-bit grayscale scaled to 8 bits"
    assert reasons["palette.png"] == "palette with transparency composited on white"
    assert reasons["rgba.png"] == "RGBA alpha channel composited on white"
    assert reasons["tiny.png"].startswith("small: 8x8, shorter side below half the resolution (32 px)")
    assert reasons["no_caption.png"] == "no caption file no_caption.txt"
    assert reasons["empty_caption.png"] == "empty caption file empty_caption.txt"
    assert reasons["latin1.png"].startswith("caption file latin1.txt is not UTF-8 (byte 0xe9 at offset 3)")


def test_report_counts_sizes_buckets_captions_and_duplicates(report):
    assert report.images == 16 and report.usable == 11
    assert report.duplicates == [["dup_a.png", "dup_b.png"]]
    assert report.sizes["shorter_side"] == {"min": 8, "median": 64, "mean": 59.0, "max": 64}
    assert report.sizes["common"][0] == ["64x64", 9]
    assert report.buckets == {"64x64": 10, "88x40": 1}  # 128x64 is 2:1; 88x40 is the nearest (2.2:1)
    captions = report.captions
    assert captions["problems"] == {
        "caption-missing": 1,
        "caption-empty": 1,
        "caption-not-utf8": 1,
        "caption-unreadable": 0,
    }
    assert captions["with_text"] == 11  # the trigger word counts: it is what training sees
    assert captions["words"] == {"min": 1, "median": 2, "mean": 2.6, "max": 4}
    assert captions["top_tags"][:4] == [["sks", 11], ["photo", 5], ["drawing", 4], ["red square", 4]]
    assert captions["clip_tokens"]["over_limit"] == 0 and captions["clip_tokens"]["max"] >= 5


def test_format_report_is_readable(report, problem_folder):
    text = format_report(report)
    assert text.startswith(f"{problem_folder} at resolution 64\nimages: 16 found, 11 usable, 5 unusable\n")
    assert "    64x64    10  ########################################\n" in text
    assert "exact duplicates (identical bytes): 1 group(s)\n  dup_a.png = dup_b.png" in text
    assert "  unusable, training skips them:\n    bomb.png: too many pixels" in text
    assert "    latin1.png: caption file latin1.txt is not UTF-8" in text
    assert "caption files 1 missing, 1 empty, 1 not UTF-8" in text


def test_training_keeps_the_usable_images_and_logs_what_check_data_reports(report, problem_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="trilora"):
        kept, pixels = load_images(scan(problem_folder, trigger="sks"), RESOLUTION)
    assert sorted(i.image.name for i in kept) == sorted(set(EXPECTED) - UNUSABLE)
    assert torch.stack(pixels).shape == (11, 3, RESOLUTION, RESOLUTION)
    messages = {record.getMessage() for record in caplog.records}
    for problem in report.problems:  # one implementation, two callers: the same words
        path = problem_folder / problem.file
        assert (
            f"{path}: {problem.reason}" if problem.usable else f"skipping {path}: {problem.reason}"
        ) in messages
    assert f"{problem_folder / 'dup_b.png'}: an exact duplicate of {problem_folder / 'dup_a.png'}" in messages
    assert (
        "images: 11 of 16 used, 5 skipped as unusable, 4 converted, 1 smaller than half the resolution "
        "(upscaled), 1 exact duplicate; captions: 1 missing, 1 empty, 1 not UTF-8"
    ) in messages
    by_name = {item.image.name: image for item, image in zip(kept, pixels, strict=True)}
    assert torch.equal(by_name["rgba.png"], torch.ones(3, RESOLUTION, RESOLUTION))  # red at alpha 0 is white
    assert torch.equal(by_name["deep.png"], torch.ones(3, RESOLUTION, RESOLUTION))  # 16-bit 65535 is 1.0
    assert torch.equal(by_name["palette.png"], torch.ones(3, RESOLUTION, RESOLUTION))  # transparent index
    torch.testing.assert_close(
        by_name["cmyk.jpg"][:, 32, 32], torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0
    )
    assert next(i for i in kept if i.image.name == "latin1.png").caption == "sks, caf\ufffd, photo"


def test_cli_json_and_exit_codes(problem_folder, report, tmp_path, capsys):
    assert main(["check-data", str(problem_folder), "--resolution", "64", "--trigger", "sks", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report.as_dict()
    assert main(["check-data", str(problem_folder), "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "images: 16 found, 11 usable, 5 unusable" in out and "tiny.png: small: 8x8" in out

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in UNUSABLE:
        (broken / name).write_bytes((problem_folder / name).read_bytes())
    assert main(["check-data", str(broken)]) == 2
    captured = capsys.readouterr()
    assert "images: 5 found, 0 usable, 5 unusable" in captured.out
    assert (
        captured.err
        == f"trilora: error: none of the 5 images in {broken} can be used; the reasons are listed above\n"
    )

    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"trilora: error: folder not found: {tmp_path / 'missing'}\n"
    (tmp_path / "empty").mkdir()
    assert main(["check-data", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("trilora: error: no images (.png, .jpg")


def test_a_caption_without_commas_is_shortened_in_the_report(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text(" ".join(["word"] * 10_000))
    report = check_folder(folder, 64)
    tag, count = report.captions["top_tags"][0]
    assert count == 1 and len(tag) <= 60 and tag.endswith("…")
    assert max(len(line) for line in format_report(report).splitlines()) < 200
