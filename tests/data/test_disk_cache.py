import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from trilora.base.tiny import build_tiny_pipeline
from trilora.data.cache import encode_latents
from trilora.data.disk_cache import LatentCache, cached_encode, vae_fingerprint
from trilora.data.folder import Item, load_image
from trilora.families.tiny import TINY_VAE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vae():
    return build_tiny_pipeline(seed=0).vae


def write_image(path, colour):
    Image.new("RGB", (40, 40), colour).save(path)
    return path


def square_pixels(item, bucket):
    return load_image(item.image, bucket[0])  # (3, R, R)


def bucket_pixels(item, bucket):
    width, height = bucket
    return F.interpolate(load_image(item.image, 64)[None], size=(height, width), mode="bilinear")[0]


def count_encoded(vae, monkeypatch):
    """Images passed to vae.encode, by patching the instance (the VAE is not what is under test)."""
    encoded = []
    original = vae.encode

    def encode(pixels, *args, **kwargs):
        encoded.append(len(pixels))
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(vae, "encode", encode)
    return encoded


def test_put_then_get_round_trips_and_writes_no_stray_files(tmp_path):
    image = write_image(tmp_path / "a.png", (255, 0, 0))
    cache = LatentCache(tmp_path / "cache", "vae-1")
    assert cache.get(image, 32, (32, 32)) is None
    latent = torch.randn(4, 8, 8)
    cache.put(image, 32, (32, 32), latent)
    torch.testing.assert_close(cache.get(image, 32, (32, 32)), latent, rtol=0, atol=0)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".safetensors"]


@pytest.mark.parametrize("change", ["content", "vae", "resolution", "bucket"])
def test_each_part_of_the_key_invalidates(tmp_path, change):
    image = write_image(tmp_path / "a.png", (255, 0, 0))
    LatentCache(tmp_path / "cache", "vae-1").put(image, 32, (32, 32), torch.randn(4, 8, 8))
    vae_id, resolution, bucket = "vae-1", 32, (32, 32)
    if change == "content":
        write_image(image, (0, 255, 0))
    elif change == "vae":
        vae_id = "vae-2"
    elif change == "resolution":
        resolution = 64
    else:
        bucket = (32, 48)
    cache = LatentCache(tmp_path / "cache", vae_id)
    assert cache.get(image, resolution, bucket) is None
    if change == "content":  # the same bytes again hit again: the key is the content, not the path or time
        write_image(image, (255, 0, 0))
        assert cache.get(image, resolution, bucket) is not None


def test_vae_fingerprint_follows_encoder_weights_config_and_dtype(vae):
    same = build_tiny_pipeline(seed=0).vae
    assert vae_fingerprint(same) == vae_fingerprint(vae)
    assert vae_fingerprint(build_tiny_pipeline(seed=1).vae) != vae_fingerprint(vae)

    with torch.no_grad():
        same.decoder.conv_out.weight.add_(1.0)  # a decoder-only fine-tune makes the same latents
    assert vae_fingerprint(same) == vae_fingerprint(vae)
    with torch.no_grad():
        same.encoder.down_blocks[1].resnets[0].conv2.weight[-1, -1, -1, -1] += (
            1.0  # one element of one tensor
        )
    assert vae_fingerprint(same) != vae_fingerprint(vae)

    torch.manual_seed(0)
    rescaled = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.18215})
    assert vae_fingerprint(rescaled) != vae_fingerprint(build_tiny_pipeline(seed=0).vae)
    assert vae_fingerprint(build_tiny_pipeline(seed=0).vae.to(torch.bfloat16)) != vae_fingerprint(vae)


def test_second_run_encodes_nothing_and_gives_the_same_latents(tmp_path, vae, monkeypatch):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    items = [Item(write_image(tmp_path / f"{i}.png", c), "") for i, c in enumerate(colours)]
    items.append(items[0])  # the same image twice is encoded once
    buckets = [(32, 32), (32, 32), (32, 32), (32, 48), (32, 48), (32, 32)]
    encoded = count_encoded(vae, monkeypatch)

    first = cached_encode(
        vae, LatentCache(tmp_path / "cache", vae_fingerprint(vae)), items, bucket_pixels, 32, buckets, CPU
    )
    assert sorted(encoded) == [2, 3]  # one batch per bucket: 3 square, 2 tall
    assert [tuple(latent.shape) for latent in first] == [(4, 8, 8)] * 3 + [(4, 12, 8)] * 2 + [(4, 8, 8)]
    expected = encode_latents(vae, torch.stack([bucket_pixels(items[3], (32, 48))]), CPU)[0]
    torch.testing.assert_close(first[3], expected)

    encoded.clear()
    second_cache = LatentCache(tmp_path / "cache", vae_fingerprint(build_tiny_pipeline(seed=0).vae))
    second = cached_encode(vae, second_cache, items, bucket_pixels, 32, buckets, CPU)
    assert encoded == []
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_corrupt_or_truncated_files_are_misses_and_rewritten(tmp_path, vae, monkeypatch):
    items = [Item(write_image(tmp_path / f"{i}.png", (60 * i, 0, 0)), "") for i in range(3)]
    cache = LatentCache(tmp_path / "cache", vae_fingerprint(vae))
    first = cached_encode(vae, cache, items, square_pixels, 32, None, CPU)

    good = cache._path(cache.key(items[0].image, 32, (32, 32))).read_bytes()
    cache._path(cache.key(items[0].image, 32, (32, 32))).write_bytes(b"not a safetensors file")
    cache._path(cache.key(items[1].image, 32, (32, 32))).write_bytes(good[: len(good) // 2])
    assert cache.get(items[0].image, 32, (32, 32)) is None
    assert cache.get(items[1].image, 32, (32, 32)) is None

    encoded = count_encoded(vae, monkeypatch)
    second = cached_encode(vae, cache, items, square_pixels, 32, None, CPU)
    assert encoded == [2]
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(cache.get(items[0].image, 32, (32, 32)), first[0])
    torch.testing.assert_close(cache.get(items[1].image, 32, (32, 32)), first[1])


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(tmp_path, monkeypatch):
    image = write_image(tmp_path / "a.png", (255, 0, 0))
    cache = LatentCache(tmp_path / "cache", "vae-1")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.put(image, 32, (32, 32), torch.randn(4, 8, 8))
    assert list((tmp_path / "cache").iterdir()) == []


def test_pixels_of_the_wrong_shape_are_a_bug_not_a_latent(tmp_path, vae):
    items = [Item(write_image(tmp_path / "a.png", (255, 0, 0)), "")]
    cache = LatentCache(tmp_path / "cache", vae_fingerprint(vae))
    with pytest.raises(ValueError, match="want \\(3, 48, 32\\)"):
        cached_encode(vae, cache, items, square_pixels, 32, [(32, 48)], CPU)
    with pytest.raises(ValueError, match="1 items but 2 buckets"):
        cached_encode(vae, cache, items, square_pixels, 32, [(32, 32), (32, 32)], CPU)
