"""The FID Inception network: the published file's tensor names and shapes, loading, errors, features."""

import pytest
import torch
from PIL import Image
from tiny_networks import random_inception

from trilora.errors import UserError
from trilora.evaluation.inception import (
    WEIGHTS_NAME,
    WEIGHTS_URL,
    FIDInceptionV3,
    inception_features,
    load_inception,
    tf_avg_pool,
)

# Inception-v3 as published (Szegedy et al. 2016; torchvision's names, which the .pth file uses):
# every convolution as (name, in channels, out channels, kernel height, kernel width).
STEM = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
        ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]  # fmt: skip


def block_a(c, pool):
    return [("branch1x1", c, 64, 1, 1), ("branch5x5_1", c, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", c, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", c, pool, 1, 1)]  # fmt: skip


def block_b(c):
    return [("branch3x3", c, 384, 3, 3), ("branch3x3dbl_1", c, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3)]  # fmt: skip


def block_c(c7):
    return [("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", 768, 192, 1, 1)]  # fmt: skip


def block_d():
    return [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3), ("branch7x7x3_1", 768, 192, 1, 1),
            ("branch7x7x3_2", 192, 192, 1, 7), ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]  # fmt: skip


def block_e(c):
    return [("branch1x1", c, 320, 1, 1), ("branch3x3_1", c, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", c, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", c, 192, 1, 1)]  # fmt: skip


BLOCKS = {"Mixed_5b": block_a(192, 32), "Mixed_5c": block_a(256, 64), "Mixed_5d": block_a(288, 64),
          "Mixed_6a": block_b(288), "Mixed_6b": block_c(128), "Mixed_6c": block_c(160), "Mixed_6d": block_c(160),
          "Mixed_6e": block_c(192), "Mixed_7a": block_d(), "Mixed_7b": block_e(1280), "Mixed_7c": block_e(2048)}  # fmt: skip


def published_shapes() -> dict[str, tuple[int, ...]]:
    """The tensors of pt_inception-2015-12-05-6726825d.pth: BasicConv2d = conv (no bias) + batch norm; fc to 1008."""
    convs = STEM + [(f"{block}.{name}", *rest) for block, layers in BLOCKS.items() for name, *rest in layers]
    shapes = {}
    for name, cin, cout, kh, kw in convs:
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{tensor}"] = (cout,)
    return shapes | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


def test_state_dict_has_exactly_the_published_names_and_shapes():
    state = FIDInceptionV3().state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(published_shapes()) == 94 * 5 + 2
    assert ours == published_shapes()
    # torchvision's Inception-v3 has 27,161,264 parameters; without its auxiliary classifier (3,326,696)
    # and with the TensorFlow graph's 1008 classes instead of 1000 (+8 x 2049) it has:
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_fid_specific_pooling():
    model = FIDInceptionV3()
    assert not model.Mixed_7b.max_pool and model.Mixed_7c.max_pool
    # TensorFlow's average pool ignores the padding: a constant image stays constant up to the border
    assert torch.equal(tf_avg_pool(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))


def images(count: int, size: int = 48) -> list[Image.Image]:
    return [Image.new("RGB", (size + 8 * (i % 2), size), (30 * i, 200 - 20 * i, 90)) for i in range(count)]


def test_weights_file_loads_with_or_without_batch_counters(inception_file, tmp_path):
    reference = random_inception()
    expected = inception_features(reference, images(2), batch_size=2)
    loaded = load_inception(inception_file)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.allclose(inception_features(loaded, images(2)), expected, rtol=1e-5, atol=1e-7)
    # files written before BatchNorm counted batches have no num_batches_tracked
    state = {k: v for k, v in torch.load(inception_file, weights_only=True).items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    assert torch.allclose(
        inception_features(load_inception(tmp_path / "old.pth"), images(2)), expected, rtol=1e-5, atol=1e-7
    )


def test_features_are_2048_floats_per_image_whatever_the_size_and_batch():
    model = random_inception(input_size=75)
    one_by_one = inception_features(model, images(3), batch_size=1)
    together = inception_features(model, images(3), batch_size=3)
    assert one_by_one.shape == (3, 2048) and one_by_one.dtype == torch.float64
    assert torch.allclose(one_by_one, together, rtol=1e-4, atol=1e-6)
    assert one_by_one.std(dim=0).mean() > 1e-3  # different images, different features


def test_missing_weights_say_where_to_get_them(tmp_path):
    for path in (None, tmp_path / "nowhere.pth"):
        with pytest.raises(UserError, match="--inception-weights") as error:
            load_inception(path)
        assert WEIGHTS_NAME in str(error.value) and WEIGHTS_URL in str(error.value)


def test_wrong_files_are_one_line_errors(inception_file, tmp_path):
    state = torch.load(inception_file, weights_only=True)
    cases = {
        "renamed.pth": {k.replace("Mixed_6e", "Mixed_6x"): v for k, v in state.items()},
        "extra.pth": state | {"AuxLogits.fc.weight": torch.zeros(1008, 768)},
        "reshaped.pth": state | {"fc.weight": torch.zeros(1000, 2048)},
        "list.pth": [1, 2, 3],
    }
    expected = {"renamed.pth": "missing", "extra.pth": "unexpected", "reshaped.pth": "fc.weight has shape",
                "list.pth": "holds a list"}  # fmt: skip
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(UserError, match=expected[name]) as error:
            load_inception(tmp_path / name)
        assert "\n" not in str(error.value)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_inception(tmp_path / "garbage.pth")
