import logging

import pytest
import torch
from PIL import Image

from trilora.data.folder import load_image, load_images, scan, split_validation
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
    assert [i.image.name for i in good] == ["good.png"] and pixels.shape == (1, 3, 8, 8)
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
