import io
import logging
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from trilora.data import folder
from trilora.data.folder import (
    BadImage,
    Problem,
    load_image,
    load_images,
    open_image,
    read_caption,
    read_caption_checked,
    scan,
    split_validation,
)
from trilora.errors import UserError


def write_image(path, colour=(255, 0, 0), size=(40, 20), mode="RGB", exif=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, colour)
    image.save(path, exif=exif) if exif is not None else image.save(path)
    return path


def test_scan_reads_captions_repeats_and_trigger(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red thing\n")
    write_image(tmp_path / "3_style" / "b.jpg")
    write_image(tmp_path / "notes" / "c.webp")
    (tmp_path / "readme.md").write_text("not an image")
    items = {i.image.name: i for i in scan(tmp_path, trigger="sks")}
    assert set(items) == {"a.png", "b.jpg", "c.webp"}
    assert items["a.png"].caption == "sks, a red thing" and items["a.png"].repeats == 1
    assert items["b.jpg"].caption == "sks" and items["b.jpg"].repeats == 3
    assert items["c.webp"].repeats == 1


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan(tmp_path / "missing")
    with pytest.raises(UserError, match=str(tmp_path)):
        scan(tmp_path)
    with pytest.raises(UserError, match="must be a dot"):
        scan(tmp_path, caption_extension="txt")


def test_load_image_resizes_crops_and_converts(tmp_path):
    path = tmp_path / "wide.png"
    image = Image.new("RGBA", (60, 20), (0, 0, 255, 255))
    image.paste((255, 0, 0, 255), (20, 0, 40, 20))  # red centre third
    image.save(path)
    pixels = load_image(path, 16)
    assert pixels.shape == (3, 16, 16)
    assert pixels.min() >= -1 and pixels.max() <= 1
    torch.testing.assert_close(pixels[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))  # the centre is red


def test_load_image_applies_exif_rotation(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    pixels = load_image(tmp_path / "rot.jpg", 20)
    # Displayed upright, the 40x20 image is 20x40 with white on top; the centre crop is 20x20 of the middle.
    assert pixels[:, 0, 10].mean() > pixels[:, -1, 10].mean()


def test_broken_images_are_named_and_skipped(tmp_path, caplog):
    write_image(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    scan_items = scan(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trilora"):
        good, pixels = load_images(scan_items, 8)
    assert [i.image.name for i in good] == ["good.png"] and torch.stack(pixels).shape == (1, 3, 8, 8)
    assert "broken.png" in caplog.text and "empty.jpg" in caplog.text
    assert "images: 1 of 3 used, 2 skipped as unusable" in caplog.text


def test_nothing_readable_is_a_user_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="none of the 1 images"):
        load_images(scan(tmp_path), 8)


def test_validation_split(tmp_path, caplog):
    for i in range(20):
        write_image(tmp_path / f"{i}.png")
    items = scan(tmp_path)
    train, val = split_validation(items, 0.1, seed=0)
    assert len(val) == 2 and len(train) == 18 and not set(train) & set(val)
    assert split_validation(items, 0.1, seed=0) == (train, val)
    assert split_validation(items, 0.1, seed=1)[1] != val
    assert len(split_validation(items[:6], 0.01, seed=0)[1]) == 1  # at least one image
    with caplog.at_level(logging.WARNING, logger="trilora"):
        train, val = split_validation(items[:4], 0.5, seed=0)
    assert val == [] and len(train) == 4 and "no validation set" in caplog.text


# Problem files: each is refused with its reason, or converted and reported, never a traceback.


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds none: a few bytes, a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise(size=(64, 64), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "name, content, kind, words",
    [
        ("zero.png", lambda: b"", "empty", "empty file (0 bytes)"),
        ("text.png", lambda: b"a caption, not pixels\n", "not-an-image", "not an image, despite its .png"),
        (
            "head.png",
            lambda: b"\x89PNG\r\n\x1a\n not really",
            "unreadable",
            "a PNG file that Pillow cannot read",
        ),
        ("half.png", lambda: png_bytes(noise())[: len(png_bytes(noise())) // 2], "truncated", "truncated"),
        ("half.jpg", lambda: png_bytes(noise(), "JPEG")[:800], "truncated", "truncated"),
        ("bomb.png", lambda: png_header(100_000, 100_000), "too-many-pixels", "too many pixels"),
        ("bomb9k.png", lambda: png_header(9000, 9000), "too-many-pixels", "9000x9000 is 81 Mpx, above the"),
    ],
)
def test_unusable_files_are_refused_with_the_reason(tmp_path, name, content, kind, words):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(BadImage, match=re.escape(words)) as caught:
        open_image(path, 64)
    assert caught.value.kind == kind
    with pytest.raises(BadImage):
        load_image(path, 64)


def test_bomb_guard_is_ours_and_leaves_pillow_alone(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(10_000, 10_000))  # above Pillow's warning limit, below its error limit
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(BadImage, match="10000x10000 is 100 Mpx") as caught:
            open_image(path, 64)
    assert caught.value.kind == "too-many-pixels" and Image.MAX_IMAGE_PIXELS == pillow_limit
    write_image(tmp_path / "ok.png", size=(64, 64))
    monkeypatch.setattr(folder, "MAX_IMAGE_PIXELS", 64 * 63)
    with pytest.raises(BadImage, match="above the limit"):
        open_image(tmp_path / "ok.png", 64)


def centre(pixels: torch.Tensor) -> list[float]:
    return pixels[:, pixels.shape[1] // 2, pixels.shape[2] // 2].tolist()


def test_cmyk_is_converted_and_reported(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=100)  # red in ink
    opened = open_image(path, 32)
    assert [p.kind for p in opened.problems] == ["converted"]
    assert opened.problems[0].reason == "CMYK converted to RGB"
    torch.testing.assert_close(
        load_image(path, 32)[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0
    )


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 0], [128 * 257, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    opened = open_image(tmp_path / "deep.png", 2)
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert [p.reason for p in opened.problems] == ["16-bit grayscale scaled to 8 bits"]
    assert np.asarray(opened.image)[:, :, 0].tolist() == [
        [255, 0],
        [128, 4],
    ]  # Pillow's convert gives 255 for 1000
    assert load_image(tmp_path / "deep.png", 2)[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # 65535 is white


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # red, fully transparent
    rgba.paste((0, 0, 255, 255), (0, 0, 4, 8))  # opaque blue left half
    rgba.save(tmp_path / "rgba.png")
    opened = open_image(tmp_path / "rgba.png", 8)
    assert [p.reason for p in opened.problems] == ["RGBA alpha channel composited on white"]
    assert opened.image.getpixel((6, 4)) == (255, 255, 255) and opened.image.getpixel((1, 4)) == (0, 0, 255)

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.paste(1, (0, 0, 4, 8))
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 (red) is transparent
    opened = open_image(tmp_path / "palette.png", 8)
    assert [p.reason for p in opened.problems] == ["palette with transparency composited on white"]
    assert opened.image.getpixel((6, 4)) == (255, 255, 255) and opened.image.getpixel((1, 4)) == (0, 255, 0)

    Image.new("LA", (8, 8), (0, 128)).save(tmp_path / "la.png")  # black at half opacity
    opened = open_image(tmp_path / "la.png", 8)
    assert [p.reason for p in opened.problems] == ["LA alpha channel composited on white"]
    assert abs(opened.image.getpixel((4, 4))[0] - 127) <= 1


def test_plain_modes_and_opaque_alpha_are_not_reported(tmp_path):
    write_image(tmp_path / "opaque.png", (1, 2, 3, 255), (8, 8), mode="RGBA")
    write_image(tmp_path / "gray.png", 7, (8, 8), mode="L")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30])
    palette.save(tmp_path / "palette.png")
    assert open_image(tmp_path / "opaque.png", 8).problems == []
    assert open_image(tmp_path / "gray.png", 8).problems == []
    opened = open_image(tmp_path / "palette.png", 8)
    assert [p.reason for p in opened.problems] == ["palette converted to RGB"]
    assert opened.image.getpixel((0, 0)) == (10, 20, 30)


def test_small_images_are_reported_and_upscaled(tmp_path):
    write_image(tmp_path / "small.png", size=(31, 40))
    write_image(tmp_path / "half.png", size=(32, 40))
    opened = open_image(tmp_path / "small.png", 64)
    assert [p.kind for p in opened.problems] == ["small"]
    assert "31x40, shorter side below half the resolution (32 px)" in opened.problems[0].reason
    assert open_image(tmp_path / "half.png", 64).problems == []
    assert load_image(tmp_path / "small.png", 64).shape == (3, 64, 64)


def test_caption_problems(tmp_path):
    image = write_image(tmp_path / "a.png")
    assert read_caption_checked(image) == ("", Problem("caption-missing", "no caption file a.txt"))
    (tmp_path / "a.txt").write_text("  \n")
    assert read_caption_checked(image) == ("", Problem("caption-empty", "empty caption file a.txt"))
    (tmp_path / "a.txt").write_bytes(b"caf\xe9, red")  # Latin-1
    text, problem = read_caption_checked(image)
    assert text == "caf\ufffd, red" and problem.kind == "caption-not-utf8"
    assert "a.txt is not UTF-8 (byte 0xe9 at offset 3)" in problem.reason
    (tmp_path / "a.txt").write_bytes("\ufeffcafé, red".encode())  # UTF-8 with Notepad's byte-order mark
    assert read_caption_checked(image) == ("café, red", None)
    assert read_caption(image, "sks") == "sks, café, red"
    (tmp_path / "a.txt").unlink()
    assert read_caption(image, "sks") == "sks" and read_caption(image) == ""
    assert scan(tmp_path)[0].caption_problem.kind == "caption-missing"


def test_load_images_logs_each_problem_file_and_a_summary(tmp_path, caplog):
    write_image(tmp_path / "good.png", size=(16, 16))
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "copy.png").write_bytes((tmp_path / "good.png").read_bytes())
    (tmp_path / "copy.txt").write_text("")
    Image.new("CMYK", (16, 16)).save(tmp_path / "ink.jpg")
    (tmp_path / "ink.txt").write_bytes(b"\xff")
    write_image(tmp_path / "tiny.png", size=(4, 4))
    (tmp_path / "tiny.txt").write_text("tiny")
    (tmp_path / "zero.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="trilora"):
        kept, pixels = load_images(scan(tmp_path), 16)
    assert [i.image.name for i in kept] == ["copy.png", "good.png", "ink.jpg", "tiny.png"]
    assert torch.stack(pixels).shape == (4, 3, 16, 16)
    messages = [record.getMessage() for record in caplog.records]
    assert f"skipping {tmp_path / 'zero.png'}: empty file (0 bytes)" in messages
    assert f"{tmp_path / 'copy.png'}: empty caption file copy.txt" in messages
    assert f"{tmp_path / 'good.png'}: an exact duplicate of {tmp_path / 'copy.png'}" in messages
    assert f"{tmp_path / 'ink.jpg'}: CMYK converted to RGB" in messages
    assert any(m.startswith(f"{tmp_path / 'ink.jpg'}: caption file ink.txt is not UTF-8") for m in messages)
    assert any(m.startswith(f"{tmp_path / 'tiny.png'}: small: 4x4") for m in messages)
    assert messages[-1] == (
        "images: 4 of 5 used, 1 skipped as unusable, 1 converted, 1 smaller than half the resolution "
        "(upscaled), 1 exact duplicate; captions: 1 empty, 1 not UTF-8"
    )


def test_missing_captions_everywhere_are_one_line(tmp_path, caplog):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", (100 * i, 0, 0), size=(8, 8))
    with caplog.at_level(logging.WARNING, logger="trilora"):
        load_images(scan(tmp_path, trigger="sks"), 8)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "none of the 3 images has a caption file: each trains on its trigger word alone (or an empty caption)",
        "images: 3 of 3 used; captions: 3 missing",
    ]
    (tmp_path / "0.txt").write_text("zero")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trilora"):
        load_images(scan(tmp_path, trigger="sks"), 8)
    assert [r.getMessage() for r in caplog.records][:2] == [
        f"{tmp_path / '1.png'}: no caption file 1.txt",
        f"{tmp_path / '2.png'}: no caption file 2.txt",
    ]


def test_clean_folders_log_nothing(tmp_path, caplog):
    write_image(tmp_path / "a.png", size=(8, 8))
    (tmp_path / "a.txt").write_text("a")
    with caplog.at_level(logging.WARNING, logger="trilora"):
        load_images(scan(tmp_path), 8)
    assert caplog.records == []


def test_bucketed_loading_keeps_the_aspect_ratio(tmp_path):
    from trilora.data.buckets import make_buckets

    write_image(tmp_path / "wide.png", size=(80, 40))
    write_image(tmp_path / "tall.png", size=(30, 60))
    write_image(tmp_path / "square.png", size=(50, 50))
    kept, pixels = load_images(scan(tmp_path), 32, make_buckets(32))
    shapes = {item.image.name: tuple(p.shape) for item, p in zip(kept, pixels, strict=True)}
    assert shapes["square.png"] == (3, 32, 32)
    assert shapes["wide.png"][2] > shapes["wide.png"][1] and shapes["tall.png"][1] > shapes["tall.png"][2]
    for _, h, w in shapes.values():
        assert h % 8 == 0 and w % 8 == 0 and h * w <= 32 * 32


def test_size_conditioning_describes_the_real_resize_and_crop(tmp_path):
    """SDXL's time_ids of a cropped, bucketed image: original (height, width), the crop's (top, left)
    in the resized image, the bucket's (height, width). The crop is measured on the pixels: a dark
    left part and a dark top band end at known places of the original, and where those edges land
    in the output says where the crop began."""
    from trilora.data.buckets import make_buckets
    from trilora.training.setup import size_condition

    wide, tall = Image.new("RGB", (540, 240), "white"), Image.new("RGB", (240, 600), "white")
    wide.paste((0, 0, 0), (0, 0, 200, 240))  # dark up to x = 200 of 540
    tall.paste((0, 0, 0), (0, 0, 240, 250))  # dark down to y = 250 of 600
    wide.save(tmp_path / "wide.png")
    tall.save(tmp_path / "tall.png")
    kept, pixels = load_images(scan(tmp_path), 256, make_buckets(256, 32))
    rows = dict(zip((item.image.name for item in kept), size_condition(kept, pixels).tolist(), strict=True))
    images = dict(zip((item.image.name for item in kept), pixels, strict=True))
    for name, (size, edge, axis) in {
        "wide.png": ((240, 540), 200, 1),
        "tall.png": ((600, 240), 250, 0),
    }.items():
        height, width, top, left, target_h, target_w = rows[name]
        assert (height, width) == size and (target_h, target_w) == tuple(images[name].shape[1:])
        assert (target_w % 32, target_h % 32) == (0, 0) and (top == 0 or left == 0)
        scale = max(target_w / width, target_h / height)
        profile = images[name].mean(dim=(0, 1 + (1 - axis)))  # mean along the other axis
        landed = int((profile < 0).sum())  # dark rows/columns in the output
        crop = left if axis == 1 else top
        assert abs(edge * scale - crop - landed) <= 1.5, (name, crop, landed)
        assert crop > 0  # these two are cropped along that axis
