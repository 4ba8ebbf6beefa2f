"""Every random stream of a run, derived from its one --seed: `derive_seed(seed, purpose, index)`.

Each purpose (and each index within it: a sample, an epoch, a step) gets its own seed from a hash,
so no two streams coincide: the noise of sample k is not the data order of epoch k, nor the
dropout of step k. Being functions of (seed, purpose, index), the streams need no state to resume,
and they do not depend on the number of processes.
"""

import hashlib

PURPOSES = (
    "split",  # which images are held out for validation
    "init",  # the adapters' initial weights (the global torch generator, once, before set-up)
    "order",  # the data order of each epoch
    "noise",  # the noise and timestep of each training sample
    "caption",  # the caption shuffle and dropout of each training sample
    "dropout",  # the adapter dropout of each optimiser step (the global torch generator)
    "validation",  # the fixed noise of the validation set
    "class_image",  # DreamBooth's generated class images, one each
    "signal",  # the latents of the generation signal's held-out prompts, one each
)


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A seed in [0, 2^63) for stream `purpose`, item `index`, of the run seeded `seed`."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; one of {', '.join(PURPOSES)}")
    digest = hashlib.sha256(f"trilora:{purpose}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
