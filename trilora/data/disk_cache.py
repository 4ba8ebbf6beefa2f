"""VAE latents cached on disk (`--cache-latents disk`), so a second run over the same images encodes nothing.

One safetensors file per (image, resolution, bucket), named by a hash of everything the latent
depends on: the image file's bytes, the VAE (`vae_fingerprint`), the resolution and the bucket.
Anything else changes the name, so there is nothing to invalidate: a changed image, another VAE or
another size is simply a miss, and stale files are never read (delete the folder to reclaim the
space). Files are written to a temporary name and renamed into place, so several runs may share
one folder and an interrupted run leaves no half-written file under a real name; a file that does
not read back (corrupt, truncated, from another version) is a miss and is rewritten.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from trilora.data.cache import encode_latents, latent_batch
from trilora.data.folder import Item
from trilora.files import hash_file, save_safetensors

log = logging.getLogger("trilora")

# Part of every key: bump it when what is stored changes (such as the posterior mean for a sample).
CACHE_FORMAT = 1

Bucket = tuple[int, int]  # (width, height) in pixels, as kohya writes buckets


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, as hex."""
    return hash_file(path).hexdigest()


@torch.no_grad()
def vae_fingerprint(vae: nn.Module) -> str:
    """A short hash that changes when the VAE's latents would: its config and its encoder weights.

    Only the encoder side (`encoder.*`, `quant_conv.*`) is hashed: a VAE whose decoder alone was
    fine-tuned (as stabilityai's sd-vae-ft-mse was) makes the same latents, so it may share the
    cache. Every byte of those weights is hashed, with each tensor's name, shape and dtype (another
    weight dtype makes other latents): a strided sample would be cheaper but misses a fine-tune of
    a few elements. On SD 1.5 that is 34M parameters, well under a second, once per run.
    """
    digest = hashlib.sha256()
    config = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = vae.state_dict()
    names = sorted(name for name in state if name.startswith(("encoder.", "quant_conv.")))
    for name in names or sorted(state):  # or everything, for a VAE named otherwise
        tensor = state[name].detach()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.flatten().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


class LatentCache:
    """Latents on disk in `folder` for one VAE (`vae_id`, from `vae_fingerprint`)."""

    def __init__(self, folder: str | Path, vae_id: str):
        self.folder = Path(folder)
        self.vae_id = vae_id
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, image_path: str | Path, resolution: int, bucket: Bucket) -> str:
        """The name of an image's latent: a hash of the image's bytes, the VAE, the resolution and bucket."""
        width, height = bucket
        parts = {
            "format": CACHE_FORMAT,
            "image": file_hash(image_path),
            "vae": self.vae_id,
            "resolution": int(resolution),
            "bucket": [int(width), int(height)],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, image_path: str | Path, resolution: int, bucket: Bucket) -> torch.Tensor | None:
        """The cached latent (4, h, w) on the CPU, or None when there is none that reads back."""
        return self._read(self.key(image_path, resolution, bucket))

    def put(self, image_path: str | Path, resolution: int, bucket: Bucket, latent: torch.Tensor) -> None:
        """Store an image's latent (4, h, w), replacing any file under the same key atomically."""
        key = self.key(image_path, resolution, bucket)
        self._write(
            key, latent, {"image": str(image_path), "resolution": str(resolution), "bucket": str(bucket)}
        )

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            latent = load_file(path)["latent"]
        except Exception as error:  # safetensors raises several types for a damaged file
            log.warning(
                "latent cache: %s does not read back (%s); encoding the image again", path.name, error
            )
            return None
        return latent

    def _write(self, key: str, latent: torch.Tensor, metadata: dict[str, str]) -> None:
        # Atomic (trilora.files): readers (other runs sharing the folder) see the old file or the
        # whole new one, never a partial one.
        save_safetensors(
            {"latent": latent.detach().cpu().contiguous()}, self._path(key), {"key": key, **metadata}
        )


def cached_encode(
    vae: nn.Module,
    cache: LatentCache,
    items: list[Item],
    pixels_fn: Callable[[Item, Bucket], torch.Tensor],
    resolution: int,
    buckets: list[Bucket] | None,
    device: torch.device,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """The latent of each item (4, h, w) on the CPU: read from `cache`, or encoded and stored when missing.

    `buckets[i]` is the (width, height) item i is trained at (None: every item at resolution x
    resolution). `pixels_fn(item, bucket)` gives its pixels (3, height, width) in [-1, 1]; it is
    called only for misses, so a cached image is not even read. Misses are encoded with
    `encode_latents`, `batch_size` images of one bucket at a time (default: as many as `latent_batch`
    allows for the bucket's size), and each batch is stored as soon
    as it is encoded. An item listed twice (same image and bucket) is encoded once. Errors of
    `pixels_fn` (such as `BadImage`) propagate.
    """
    if buckets is None:
        buckets = [(resolution, resolution)] * len(items)
    if len(buckets) != len(items):
        raise ValueError(f"{len(items)} items but {len(buckets)} buckets")
    keys = [cache.key(item.image, resolution, bucket) for item, bucket in zip(items, buckets, strict=True)]

    latents: dict[str, torch.Tensor] = {}
    missing: dict[Bucket, dict[str, Item]] = {}  # bucket -> key -> item, in first-seen order
    for item, bucket, key in zip(items, buckets, keys, strict=True):
        if key in latents or key in missing.get(bucket, {}):
            continue
        latent = cache._read(key)
        if latent is None:
            missing.setdefault(bucket, {})[key] = item
        else:
            latents[key] = latent
    count = sum(len(todo) for todo in missing.values())
    log.info("latent cache: %d of %d images cached, encoding %d", len(latents), len(latents) + count, count)

    for bucket, todo in missing.items():
        width, height = bucket
        todo = list(todo.items())
        per_batch = batch_size or latent_batch(width * height)
        for start in range(0, len(todo), per_batch):
            chunk = todo[start : start + per_batch]
            pixels = torch.stack([pixels_fn(item, bucket) for _, item in chunk])  # (B, 3, H, W)
            if pixels.shape[1:] != (3, height, width):
                raise ValueError(
                    f"pixels_fn gave {tuple(pixels.shape[1:])} for bucket {bucket}, want (3, {height}, {width})"
                )
            encoded = encode_latents(vae, pixels, device, per_batch)  # (B, 4, H/f, W/f)
            for (key, item), latent in zip(chunk, encoded, strict=True):
                metadata = {"image": str(item.image), "resolution": str(resolution), "bucket": str(bucket)}
                cache._write(key, latent, metadata)
                latents[key] = latent
    return [latents[key] for key in keys]
