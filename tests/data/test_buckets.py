import pytest
from hypothesis import given
from hypothesis import strategies as st

from trilora.data.buckets import default_step, make_buckets, nearest_bucket

resolutions = st.integers(min_value=8, max_value=2048).filter(lambda r: r % 8 == 0)
sides = st.integers(min_value=1, max_value=20_000)


def test_kohya_buckets_at_512():
    # What kohya's make_bucket_resolutions((512, 512), 256, 1024, 64) returns.
    widths = [256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024]
    heights = [1024, 768, 640, 576, 512, 448, 384, 320, 320, 256, 256, 256, 256]
    expected = sorted(set(zip(widths, heights, strict=True)) | set(zip(heights, widths, strict=True)))
    assert make_buckets(512) == expected and len(expected) == 17


def test_step_follows_resolution():
    assert default_step(512) == default_step(256) == 64 and default_step(32) == 8
    assert make_buckets(32) == [
        (16, 48),
        (16, 56),
        (16, 64),
        (24, 40),
        (32, 32),
        (40, 24),
        (48, 16),
        (56, 16),
        (64, 16),
    ]
    assert min(min(b) for b in make_buckets(768)) == 384 and max(max(b) for b in make_buckets(768)) == 1536
    with pytest.raises(ValueError):
        make_buckets(4)


@given(resolutions)
def test_bucket_properties(resolution):
    step = default_step(resolution)
    buckets = make_buckets(resolution)
    square = resolution // step * step
    assert (square, square) in buckets
    assert buckets == sorted(set(buckets))
    for width, height in buckets:
        assert width * height <= resolution * resolution
        assert width % step == 0 and height % step == 0
        assert (height, width) in buckets
    assert nearest_bucket(1000, 1000, buckets) == (square, square)


@given(resolutions, sides, sides)
def test_nearest_bucket_is_symmetric_and_nearest(resolution, width, height):
    buckets = make_buckets(resolution)
    chosen = nearest_bucket(width, height, buckets)
    assert chosen in buckets
    assert nearest_bucket(height, width, buckets) == chosen[::-1]
    # No other bucket is closer in aspect ratio (compared as ratios of ratios, >= 1).
    error = max(chosen[0] * height, width * chosen[1]) / min(chosen[0] * height, width * chosen[1])
    for w, h in buckets:
        assert max(w * height, width * h) / min(w * height, width * h) >= error * (1 - 1e-12)


@given(resolutions, st.integers(min_value=1, max_value=8))
def test_an_image_of_a_bucket_shape_goes_to_that_bucket(resolution, scale):
    buckets = make_buckets(resolution)
    for width, height in buckets:
        same_ratio = [b for b in buckets if b[0] * height == b[1] * width]
        assert nearest_bucket(width * scale, height * scale, buckets) == max(
            same_ratio, key=lambda b: b[0] * b[1]
        )


def test_bad_input():
    with pytest.raises(ValueError):
        nearest_bucket(0, 10, make_buckets(64))
    with pytest.raises(ValueError):
        nearest_bucket(10, 10, [])
