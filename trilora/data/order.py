"""The order in which training samples are seen: a pure function of the seed and the epoch.

Each epoch shuffles the images (each repeated as often as its folder says), groups them into
batches of one shape (one aspect-ratio bucket), and shuffles the batches. Being a function of
(seed, epoch), the order needs no state to resume.
"""

import random
from collections import defaultdict
from collections.abc import Hashable

from trilora.seeds import derive_seed


def epoch_batches(
    repeats: list[int], buckets: list[Hashable], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Batches of item indices for one epoch; every batch holds items of a single bucket."""
    rng = random.Random(derive_seed(seed, "order", epoch))
    expanded = [i for i, count in enumerate(repeats) for _ in range(count)]
    rng.shuffle(expanded)
    by_bucket: dict[Hashable, list[int]] = defaultdict(list)
    for i in expanded:
        by_bucket[buckets[i]].append(i)
    batches = [
        members[start : start + batch_size]
        for members in by_bucket.values()
        for start in range(0, len(members), batch_size)
    ]
    if len(by_bucket) > 1:
        rng.shuffle(batches)
    return batches


class BatchOrder:
    """Micro-batch number n (0-based, over the whole run) -> item indices, epoch after epoch."""

    def __init__(self, repeats: list[int], buckets: list[Hashable], batch_size: int, seed: int):
        self.args = (repeats, buckets, batch_size, seed)
        self.epoch, self.batches, self.first = -1, [], 0

    def __call__(self, n: int) -> list[int]:
        if n < self.first:  # going back: start over from epoch 0
            self.epoch, self.batches, self.first = -1, [], 0
        while n >= self.first + len(self.batches):
            self.first += len(self.batches)
            self.epoch += 1
            self.batches = epoch_batches(*self.args[:3], self.args[3], self.epoch)
        return self.batches[n - self.first]

    @property
    def batches_per_epoch(self) -> int:
        return len(epoch_batches(*self.args[:3], self.args[3], 0))
