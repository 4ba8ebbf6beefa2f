"""Generate the evaluation images: the base model, then each adapter at each strength, through the cache.

Image k of every prompt starts from the latent of seed `seed + k` (the TriLoRA paper's protocol is
seed 30, 20 steps, guidance 7.5), so the same prompt and k give comparable images across models
and strengths, whatever the batching. A prompt listed m times gets m x K images (seeds seed ...
seed + mK - 1), not m copies of the same K: captions folders often repeat a caption. Strength 0 is
the base model itself and shares its images.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from trilora.config import SamplingConfig
from trilora.evaluation.cache import ImageCache, content_hash, file_identity, settings_key
from trilora.inference.generate import load_adapters
from trilora.sampling import sample_images

log = logging.getLogger("trilora")


@dataclass(frozen=True)
class Variant:
    """One row of the evaluation: the base model (adapter None) or an adapter at a strength."""

    label: str
    adapter: Path | None = None
    strength: float = 0.0

    @property
    def is_base(self) -> bool:
        return self.adapter is None or self.strength == 0


def images_per_prompt(prompts: list[str], num_images: int) -> dict[str, int]:
    """Distinct prompt -> its number of images (occurrences x num_images), in the order of first appearance."""
    counts = {}
    for prompt in prompts:
        counts[prompt] = counts.get(prompt, 0) + num_images
    return counts


def variant_keys(
    variant: Variant,
    prompt_images: dict[str, int],
    protocol: SamplingConfig,
    base_identity: list,
    adapter_hashes: dict[Path, str],
    device: torch.device,
    dtype: torch.dtype,
) -> list[list[str]]:
    """Cache keys [distinct prompt][image index] of a variant's images."""
    common = dict(
        base=base_identity,
        adapter=None if variant.is_base else adapter_hashes[variant.adapter],
        strength=0.0 if variant.is_base else variant.strength,
        steps=protocol.steps,
        guidance=protocol.guidance,
        height=protocol.height,
        width=protocol.width,
        scheduler=protocol.scheduler,
        device=device.type,  # CPU and CUDA kernels, fp32 and fp16, round differently
        dtype=str(dtype),
    )
    return [
        [settings_key(prompt=prompt, seed=protocol.seed + k, index=k, **common) for k in range(count)]
        for prompt, count in prompt_images.items()
    ]


def all_keys(
    variants: list[Variant],
    prompt_images: dict[str, int],
    protocol: SamplingConfig,
    base: Path,
    base_config: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    model_options: list[str] = (),
) -> dict[Variant, list[list[str]]]:
    """`model_options`: what else changes the base model's images (--prediction-type and
    --zero-terminal-snr when given)."""
    base_identity = (
        file_identity(base) + (file_identity(base_config) if base_config else []) + list(model_options)
    )
    adapter_hashes = {v.adapter: content_hash(v.adapter) for v in variants if not v.is_base}
    return {
        v: variant_keys(v, prompt_images, protocol, base_identity, adapter_hashes, device, dtype)
        for v in variants
    }


def generate_missing(
    load_pipe,
    variants: list[Variant],
    keys: dict[Variant, list[list[str]]],
    prompts: list[str],
    protocol: SamplingConfig,
    cache: ImageCache,
    batch_size: int,
) -> int:
    """Generate the images not in the cache yet and return how many; `load_pipe()` is called only if any are."""

    missing, planned = {}, set()
    for variant in variants:
        missing[variant] = []
        for p, row in enumerate(keys[variant]):
            for k, key in enumerate(row):
                if key not in cache and key not in planned:
                    planned.add(key)
                    missing[variant].append((p, k, key))
    total = sum(len(jobs) for jobs in missing.values())
    cached = sum(len(row) for v in variants for row in keys[v]) - total
    log.info("evaluate: %d images to generate, %d from the cache in %s", total, cached, cache.folder)
    if total == 0:
        return 0
    pipe = load_pipe()
    progress = tqdm(total=total, desc="generating", unit="image")
    for variant, jobs in missing.items():
        if not jobs:
            continue
        if not variant.is_base:
            load_adapters(pipe, [(variant.adapter, variant.strength)])
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            images = sample_images(pipe, [prompts[p] for p, _, _ in chunk], [protocol.seed + k for _, k, _ in chunk],
                                   protocol.steps, protocol.guidance, protocol.height, protocol.width,
                                   batch_size=batch_size)  # fmt: skip
            for (_, _, key), image in zip(chunk, images, strict=True):
                cache.put(key, image)
            progress.update(len(chunk))
        if not variant.is_base:
            pipe.unload_lora_weights()
    progress.close()
    return total
