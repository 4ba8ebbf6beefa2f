"""Build everything a run needs once: device, base model, cached latents and captions, adapters."""

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from trilora.adapters.inject import add_run_adapters
from trilora.base.detect import Base
from trilora.base.load import load_model
from trilora.config import RunConfig
from trilora.data.buckets import Bucket, make_buckets
from trilora.data.cache import encode_captions, encode_latents
from trilora.data.disk_cache import LatentCache, cached_encode, vae_fingerprint
from trilora.data.folder import IMAGE_EXTENSIONS, Item, image_size, load_images, scan, split_validation
from trilora.data.order import BatchOrder
from trilora.data.subsets import load_dataset_config, scan_subsets
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.files import save_image, write_text
from trilora.sampling import DEFAULT_BATCH, sample_images
from trilora.seeds import derive_seed
from trilora.training.distributed import Distributed
from trilora.training.fast import apply_fast_path
from trilora.training.placement import placement
from trilora.training.signal import FindScorer, GenerationSignal, generation_signal
from trilora.training.validation import ValidationSet, make_validation_set, validation_on

log = logging.getLogger("trilora")
MAX_SAMPLES_PER_EPOCH = 10_000_000  # an epoch's order is a list of this many indices
MAX_STEPS = 10_000_000  # the bound on --steps, for steps derived from --epochs


@dataclass
class Setup:
    """Everything the loop needs, built once."""

    pipe: object
    device: torch.device
    autocast: torch.dtype | None
    train_items: list[Item]
    train_latents: list[torch.Tensor]  # each (C, h, w), h and w by its bucket
    train_condition: torch.Tensor | None  # (N, 77, D) embeddings; None when captions are encoded every step
    train_sizes: torch.Tensor  # (N, 6) each image's size conditioning: original size, crop, target size
    train_buckets: list[tuple]  # the shape of each training latent: batches hold one shape
    validation: ValidationSet | None
    total_steps: int
    data_fingerprint: str  # what resume checks to refuse changed data
    stop_on: str  # what early stopping follows (--stop-on auto resolved)
    signal: GenerationSignal | None  # the generation signal, when stop_on is "generation"
    base: Base  # the loaded base model: pipe is base.pipe


def setup(config: RunConfig, dist: Distributed | None = None, find_scorer: FindScorer | None = None) -> Setup:
    data, adapter, opts = config.data, config.adapter, config.train
    dist = dist or Distributed()
    device = resolve_device(opts.device, dist.local_rank)

    items = scan_subsets(load_dataset_config(data.dataset_config)) if data.dataset_config else (
        scan(data.data, data.trigger, data.caption_extension)
    )  # fmt: skip
    if data.class_data:
        if dist.main:
            generate_class_images(config, device)
        dist.barrier()
        items += class_items(config)
    regularisation = [i for i in items if i.is_reg]
    items = [i for i in items if not i.is_reg]
    if data.val_data:
        train_items, val_items = items, scan(data.val_data, data.trigger, data.caption_extension)
    else:
        train_items, val_items = split_validation(items, data.val_fraction, opts.seed)
    train_items += regularisation  # class images train, never validate
    per_epoch = sum(i.repeats for i in train_items)
    if per_epoch > MAX_SAMPLES_PER_EPOCH:
        raise UserError(f"one epoch is {per_epoch} images with repeats, more than {MAX_SAMPLES_PER_EPOCH}: lower "
                        "the repeats (N_name folders, or repeats in a --dataset-config)")  # fmt: skip
    base = load_model(config.model)
    pipe = base.pipe
    if opts.lr_text_encoder_2 is not None and "text_encoder_2" not in base.family.text_encoders:
        raise UserError(f"--lr-text-encoder-2 is the learning rate of SDXL's second text encoder, which "
                        f"{base.family} has not: drop it (--lr-text-encoder sets the text encoder's)")  # fmt: skip
    # the stopping signal's scorer before any long work, so that a wrong --clip-model stops here
    stop_on, signal = generation_signal(config, pipe, [i.caption for i in val_items], device, find_scorer) if val_items else (
        "val_loss", None)  # fmt: skip
    buckets = choose_buckets([i.image for i in train_items + val_items], data.resolution, data.buckets,
                             base.family.bucket_step)  # fmt: skip
    train_items, train_pixels = load_images(train_items, data.resolution, buckets)
    val_items, val_pixels = load_images(val_items, data.resolution, buckets) if val_items else ([], [])
    log.info("%d training images (%d with repeats, %d class images), %d validation images",
             len(train_items), sum(i.repeats for i in train_items), sum(i.is_reg for i in train_items),
             len(val_items))  # fmt: skip
    if buckets:
        histogram = Counter(f"{p.shape[2]}x{p.shape[1]}" for p in train_pixels)
        log.info(
            "buckets (width x height: images): %s",
            ", ".join(f"{k}: {v}" for k, v in sorted(histogram.items())),
        )

    pipe.vae.to(device)
    cache = None
    if data.cache_latents == "disk":
        cache = LatentCache(Path(config.output).resolve().parent / ".latent_cache", vae_fingerprint(pipe.vae))
    train_latents = encode_all(pipe.vae, train_items, train_pixels, data.resolution, device, cache)
    val_latents = encode_all(pipe.vae, val_items, val_pixels, data.resolution, device, cache)
    pipe.vae.to("cpu")
    refuse_non_finite(train_items + val_items, train_latents + val_latents, "latent (the VAE's output)")
    train_sizes, val_sizes = size_condition(train_items, train_pixels), size_condition(val_items, val_pixels)
    del train_pixels, val_pixels

    place = placement(config, device.type, bool(config.validation.sample_prompt) or signal is not None)
    text_encoders = [getattr(pipe, part) for part in base.family.text_encoders]
    for model in text_encoders:
        model.to(device)
    captions = [i.caption for i in train_items], [i.caption for i in val_items]
    if place.captions_per_step:
        # encoded at every step: tokens now (validation), captions transformed in the loop (training)
        train_condition = None
        val_condition = base.family.tokenize(pipe, captions[1]) if val_items else None
    else:
        family = base.family

        def encode(texts: list[str]) -> torch.Tensor:
            return family.encode(pipe, family.tokenize(pipe, texts))

        train_condition = encode_captions(encode, captions[0])
        val_condition = encode_captions(encode, captions[1]) if val_items else None
        refuse_non_finite(train_items + val_items, [*train_condition, *(val_condition if val_items else [])],
                          "caption's text-encoder output")  # fmt: skip
        for model in text_encoders:
            model.to("cpu")  # until images are drawn (placement.py)

    weight_dtype = place.weight_dtype
    pipe.unet.to(device)
    if weight_dtype != pipe.unet.dtype:
        pipe.unet.to(weight_dtype)
    if adapter.train_text_encoder:
        for model in text_encoders:
            model.to(device=device, dtype=weight_dtype)
    add_run_adapters(pipe.unet, dict(zip(base.family.text_encoders, text_encoders, strict=True)), adapter)
    if opts.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    apply_fast_path(pipe.unet, opts, device, weight_dtype)

    validation = None
    if val_items:
        num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        validation = make_validation_set(val_latents, val_condition, config.validation.val_timesteps,
                                         num_train_timesteps, opts.seed, val_sizes)  # fmt: skip
    cached = train_latents + ([train_condition] if train_condition is not None else []) + (
        [*validation.latents, validation.condition, *validation.noise] if validation else [])  # fmt: skip
    if cache_on_device(opts.cache_on_device, device, cached):
        log.info("the cache (%.1f MiB) stays on %s", sum(t.nbytes for t in cached) / 2**20, device)
        train_latents = [latent.to(device) for latent in train_latents]
        train_sizes = train_sizes.to(device)
        train_condition = train_condition.to(device) if train_condition is not None else None
        validation = validation_on(validation, device) if validation else None
    shapes = [tuple(latent.shape) for latent in train_latents]
    order = BatchOrder([i.repeats for i in train_items], shapes, opts.batch_size, opts.seed)
    steps_per_epoch = math.ceil(order.batches_per_epoch / opts.grad_accum)
    total_steps = opts.steps or (opts.epochs * steps_per_epoch if opts.epochs else 1000)
    if total_steps > MAX_STEPS:
        raise UserError(f"--epochs {opts.epochs} is {total_steps} steps of {steps_per_epoch} each, more than "
                        f"{MAX_STEPS}: give fewer --epochs, or --steps")  # fmt: skip
    fingerprint = data_fingerprint(train_items, val_items)
    return Setup(pipe, device, place.autocast, train_items, train_latents, train_condition, train_sizes, shapes,
                 validation, total_steps, fingerprint, stop_on, signal, base)  # fmt: skip


def cache_on_device(asked: bool | None, device: torch.device, cached: list[torch.Tensor]) -> bool:
    """Whether the cached latents and embeddings stay on the training device (no copy per step): as
    asked, or by default on CUDA when they take under a tenth of its free memory (the rest is the
    step's). On the CPU they are there already."""
    if device.type == "cpu" or asked is False:
        return False
    if asked or device.type != "cuda":
        return bool(asked)
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.nbytes for t in cached) <= free / 10


def data_fingerprint(train_items: list[Item], val_items: list[Item]) -> str:
    """A hash of which images (name and size), captions and repeats a run trains and validates on."""
    digest = hashlib.sha256()
    for part, items in (("train", train_items), ("val", val_items)):
        for item in items:
            digest.update(
                f"{part}|{item.image.name}|{item.image.stat().st_size}|{item.caption}|{item.repeats}\n".encode()
            )
    return digest.hexdigest()


def choose_buckets(
    images: list[Path], resolution: int, enabled: bool | None, step: int = 64
) -> list[Bucket] | None:
    """Aspect-ratio buckets when asked for, or by default when the images differ in aspect ratio;
    `step` (the family's) at real resolutions, 8 px below 256."""
    if enabled is None:
        ratios = {round(size[0] / size[1], 2) for size in map(image_size, images) if size}
        enabled = len(ratios) > 1
    return make_buckets(resolution, step if resolution >= 256 else None) if enabled else None


def size_condition(items: list[Item], pixels: list[torch.Tensor]) -> torch.Tensor:
    """(N, 6) per image: original height and width, crop top and left, target height and width
    (SDXL's time_ids, in diffusers' order)."""
    rows = [(*item.crop, *image.shape[1:]) for item, image in zip(items, pixels, strict=True)]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 6)


def refuse_non_finite(items: list[Item], cached: list[torch.Tensor], what: str) -> None:
    """A NaN or inf in what is cached would make every step that draws it NaN: stop, naming the image."""
    for item, tensor in zip(items, cached, strict=True):
        if not torch.isfinite(tensor).all():
            raise UserError(f"{item.image}: its {what} holds NaN or inf values, so training on it would give NaN "
                            "losses; remove the image (or, for a latent, use a VAE that is not overflowing: an "
                            "fp32 VAE or an fp16-fix VAE)")  # fmt: skip


def encode_all(
    vae, items: list[Item], pixels: list[torch.Tensor], resolution: int, device, cache
) -> list[torch.Tensor]:
    """Latents of every image, encoded a batch of one shape at a time, or read from the disk cache."""
    if not items:
        return []
    if cache is not None:
        by_item = {id(item): image for item, image in zip(items, pixels, strict=True)}
        buckets = [(p.shape[2], p.shape[1]) for p in pixels]
        return cached_encode(
            vae, cache, items, lambda item, _: by_item[id(item)], resolution, buckets, device
        )
    latents: list[torch.Tensor | None] = [None] * len(items)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(pixels):
        by_shape.setdefault(tuple(image.shape), []).append(i)
    for indices in by_shape.values():
        for index, latent in zip(
            indices, encode_latents(vae, torch.stack([pixels[i] for i in indices]), device), strict=True
        ):
            latents[index] = latent
    return latents


def generate_class_images(config: RunConfig, device: torch.device) -> None:
    """DreamBooth's class images (prior preservation): generate the missing ones with the base model.

    Generated images are kept in --class-data with their caption, so the next run reuses them.
    """
    data = config.data
    folder = Path(data.class_data)
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    missing = max(0, data.num_class_images - len(existing))
    if missing:
        log.info("generating %d class images for %r in %s", missing, data.class_prompt, folder)
        pipe = load_model(config.model).pipe.to(device)
        for start in tqdm(range(0, missing, DEFAULT_BATCH), desc="class images", disable=None):
            indices = range(len(existing) + start, len(existing) + min(start + DEFAULT_BATCH, missing))
            seeds = [derive_seed(config.train.seed, "class_image", index) for index in indices]
            images = sample_images(pipe, [data.class_prompt] * len(seeds), seeds, config.validation.sample_steps,
                                   height=data.resolution, width=data.resolution)  # fmt: skip
            for index, image in zip(indices, images, strict=True):
                save_image(image, folder / f"class-{index:05d}.png")
                write_text(folder / f"class-{index:05d}.txt", data.class_prompt)
        del pipe


def class_items(config: RunConfig) -> list[Item]:
    data = config.data
    items = scan(data.class_data, None, data.caption_extension)
    return [replace(item, caption=item.caption or data.class_prompt, is_reg=True) for item in items]
