"""Aspect-ratio buckets as kohya's trainer makes them: shapes of about resolution² pixels.

Training on a few fixed shapes instead of centre crops keeps the edges of wide and tall images.
Kohya's `make_bucket_resolutions` steps the width by 64 from resolution/2 to 2·resolution and
takes the tallest height (a multiple of 64) that keeps the area within resolution², plus the
square. We do the same, with the step 8 for toy resolutions below 256 (the tiny test model).

An image goes to the bucket whose aspect ratio is nearest. Kohya compares width/height
linearly; we compare log(width/height), so a 1:2 image and a 2:1 image land in transposed
buckets, and ties go to the larger bucket.
"""

import math

Bucket = tuple[int, int]  # (width, height) in pixels, as kohya writes buckets


def default_step(resolution: int) -> int:
    """64 pixels (8 latent pixels, as kohya) at real resolutions; 8 below 256, where 64 is too coarse."""
    return 64 if resolution >= 256 else 8


def make_buckets(resolution: int, step: int | None = None) -> list[Bucket]:
    """Every (width, height) with sides multiples of `step`, area <= resolution², sides within
    [resolution/2, 2·resolution] (rounded down to the step), each the tallest for its width; sorted.

    At 512 these are kohya's 17 SD 1.x buckets, from (256, 1024) to (1024, 256).
    """
    step = step or default_step(resolution)
    if step <= 0 or resolution < step:
        raise ValueError(f"resolution {resolution} must be at least the bucket step {step} (> 0)")
    max_area = resolution * resolution
    min_side = max(step, resolution // 2 // step * step)
    max_side = 2 * resolution // step * step
    square = resolution // step * step
    buckets = {(square, square)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, max_area // width // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest to width:height on a log scale; ties go to the larger."""
    if width <= 0 or height <= 0:
        raise ValueError(f"an image has positive sides, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    # log(w) - log(h) is exactly antisymmetric in floating point, so transposing the image
    # transposes the answer; the last keys break ties the same way for both orientations.
    ratio = math.log(width) - math.log(height)

    def key(bucket: Bucket):
        bucket_ratio = math.log(bucket[0]) - math.log(bucket[1])
        return abs(bucket_ratio - ratio), -bucket[0] * bucket[1], abs(bucket_ratio), bucket

    return min(buckets, key=key)
