"""The image cache: keys cover every setting; base files by identity, adapters by content; inputs."""

import os

import pytest
import torch
from PIL import Image

from trilora.config import SamplingConfig as Protocol
from trilora.errors import UserError
from trilora.evaluation.cache import ImageCache, content_hash, file_identity, settings_key
from trilora.evaluation.generation import Variant, images_per_prompt, variant_keys
from trilora.evaluation.inputs import read_prompts, reference_files

SETTINGS = dict(base=["/m", ["unet.bin", 10, 1]], adapter="abc", strength=0.5, prompt="a cat", seed=30, index=0,
                steps=20, guidance=7.5, height=None, width=None, scheduler=None, device="cpu", dtype="float32")  # fmt: skip


def test_key_changes_with_every_setting():
    key = settings_key(**SETTINGS)
    assert key == settings_key(**dict(reversed(SETTINGS.items())))  # order does not matter
    changed = dict(base=["/m", ["unet.bin", 10, 2]], adapter="abd", strength=0.75, prompt="a dog", seed=31,
                   index=1, steps=30, guidance=5.0, height=512, width=768, scheduler="euler", device="cuda",
                   dtype="float16")  # fmt: skip
    assert set(changed) == set(SETTINGS)
    for name, value in changed.items():
        assert settings_key(**SETTINGS | {name: value}) != key, name


def test_variant_keys_share_the_base_images_at_strength_zero(tmp_path):
    adapter = tmp_path / "a.safetensors"
    hashes = {adapter: "hash"}
    args = ({"p1": 2, "p2": 2}, Protocol(), ["/base"], hashes, torch.device("cpu"), torch.float32)
    base = variant_keys(Variant("base"), *args)
    zero = variant_keys(Variant("a", adapter, 0.0), *args)
    half = variant_keys(Variant("a", adapter, 0.5), *args)
    assert base == zero
    assert len({key for row in base + half for key in row}) == 8


def test_a_repeated_prompt_gets_more_images_not_copies():
    counts = images_per_prompt(["a cat", "a dog", "a cat"], num_images=2)
    assert counts == {"a cat": 4, "a dog": 2}
    keys = variant_keys(
        Variant("base"), counts, Protocol(seed=30), ["/b"], {}, torch.device("cpu"), torch.float32
    )
    assert [len(row) for row in keys] == [4, 2] and len({k for row in keys for k in row}) == 6
    # image k of a prompt is the same image whatever else is in the list
    alone = variant_keys(
        Variant("base"), {"a cat": 2}, Protocol(seed=30), ["/b"], {}, torch.device("cpu"), torch.float32
    )
    assert alone[0] == keys[0][:2]


def test_identity_follows_modification_and_content_follows_bytes(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "w.bin"
    weights.write_bytes(b"1234")
    identity, digest = file_identity(folder), content_hash(weights)
    os.utime(weights, ns=(0, 10**9))  # touched: new identity, same content
    assert file_identity(folder) != identity and content_hash(weights) == digest
    weights.write_bytes(b"1235")
    assert content_hash(weights) != digest
    assert content_hash(folder) != content_hash(tmp_path)  # folders hash their files and relative paths


def test_cache_round_trip(tmp_path):
    cache = ImageCache(tmp_path / "cache")
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    key = settings_key(**SETTINGS)
    assert key not in cache
    cache.put(key, image)
    assert key in cache and cache.get(key).tobytes() == image.tobytes()
    assert not list((tmp_path / "cache").rglob("*.partial.png"))


def test_prompts_from_a_file_or_a_captions_folder(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    assert read_prompts(tmp_path / "prompts.txt") == ["a cat", "a dog"]
    captions = tmp_path / "data" / "10_style"
    captions.mkdir(parents=True)
    (captions / "b.txt").write_text("mystyle, a house\nby the sea")
    (captions / "a.txt").write_text("mystyle, a tree")
    (captions / "a.png").write_bytes(b"")
    assert read_prompts(tmp_path / "data") == ["mystyle, a tree", "mystyle, a house by the sea"]
    (tmp_path / "empty.txt").write_text("\n")
    for path in (tmp_path / "empty.txt", tmp_path / "missing"):
        with pytest.raises(UserError, match="prompt"):
            read_prompts(path)


def test_reference_images(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="at least 2"):
        reference_files(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "b.JPG")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "c.png")
    assert [p.name for p in reference_files(tmp_path)] == ["a.png", "b.JPG"]
