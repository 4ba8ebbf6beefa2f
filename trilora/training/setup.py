"""Build everything a run needs once: device, base model, cached latents and captions, adapters."""

import hashlib
import logging
import math
from dataclasses import dataclass

import torch

from trilora.adapters.inject import add_adapters, text_encoder_targets, unet_targets
from trilora.base.load import load_pipeline
from trilora.config import RunConfig
from trilora.data.cache import encode_captions, encode_latents, tokenize
from trilora.data.folder import Item, load_images, scan, split_validation
from trilora.data.order import BatchOrder
from trilora.errors import UserError
from trilora.training.validation import ValidationSet, make_validation_set

log = logging.getLogger("trilora")


@dataclass
class Setup:
    """Everything the loop needs, built once."""

    pipe: object
    device: torch.device
    autocast: torch.dtype | None
    train_items: list[Item]
    train_latents: torch.Tensor  # (N, C, h, w)
    train_condition: torch.Tensor  # (N, 77, D) embeddings, or (N, 77) ids when the text encoder trains
    train_buckets: list[tuple]  # the shape of each training latent: batches hold one shape
    validation: ValidationSet | None
    total_steps: int
    data_fingerprint: str  # what resume checks to refuse changed data


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def setup(config: RunConfig) -> Setup:
    data, adapter, opts = config.data, config.adapter, config.train
    device = resolve_device(opts.device)
    autocast = torch.bfloat16 if opts.mixed_precision == "bf16" or (
        opts.mixed_precision == "auto" and device.type == "cuda"
    ) else None  # fmt: skip

    items = scan(data.data, data.trigger)
    if data.val_data:
        train_items, val_items = items, scan(data.val_data, data.trigger)
    else:
        train_items, val_items = split_validation(items, data.val_fraction, opts.seed)
    pipe = load_pipeline(config.model.base, config.model.base_config)
    train_items, train_pixels = load_images(train_items, data.resolution)
    val_items, val_pixels = load_images(val_items, data.resolution) if val_items else ([], None)
    log.info("%d training images (%d with repeats), %d validation images",
             len(train_items), sum(i.repeats for i in train_items), len(val_items))  # fmt: skip

    pipe.vae.to(device)
    train_latents = encode_latents(pipe.vae, train_pixels, device)
    val_latents = encode_latents(pipe.vae, val_pixels, device) if val_items else None
    pipe.vae.to("cpu")

    pipe.text_encoder.to(device)
    captions = [i.caption for i in train_items], [i.caption for i in val_items]
    if adapter.train_text_encoder:
        train_condition, val_condition = (
            tokenize(pipe.tokenizer, captions[0]),
            tokenize(pipe.tokenizer, captions[1]),
        )
    else:
        train_condition = encode_captions(pipe.tokenizer, pipe.text_encoder, captions[0])
        val_condition = encode_captions(pipe.tokenizer, pipe.text_encoder, captions[1]) if val_items else None
        pipe.text_encoder.to("cpu")

    weight_dtype = autocast or torch.float32  # frozen base weights; adapters stay fp32
    pipe.unet.to(device)
    if weight_dtype != pipe.unet.dtype:
        pipe.unet.to(weight_dtype)
    alpha = adapter.alpha if adapter.alpha is not None else adapter.rank
    add_adapters(
        pipe.unet,
        unet_targets(pipe.unet),
        adapter.method,
        adapter.rank,
        alpha,
        adapter.sigma_init,
        adapter.dropout,
    )
    if adapter.train_text_encoder:
        pipe.text_encoder.to(device=device, dtype=weight_dtype)
        targets = text_encoder_targets(pipe.text_encoder)
        add_adapters(
            pipe.text_encoder,
            targets,
            adapter.method,
            adapter.rank,
            alpha,
            adapter.sigma_init,
            adapter.dropout,
        )
    if opts.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()

    validation = None
    if val_items:
        num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        validation = make_validation_set(
            val_latents, val_condition, config.validation.val_timesteps, num_train_timesteps, opts.seed
        )
    buckets = [tuple(latent.shape) for latent in train_latents]
    order = BatchOrder([i.repeats for i in train_items], buckets, opts.batch_size, opts.seed)
    steps_per_epoch = math.ceil(order.batches_per_epoch / opts.grad_accum)
    total_steps = opts.steps or (opts.epochs * steps_per_epoch if opts.epochs else 1000)
    fingerprint = data_fingerprint(train_items, val_items)
    return Setup(pipe, device, autocast, train_items, train_latents, train_condition, buckets, validation,
                 total_steps, fingerprint)  # fmt: skip


def data_fingerprint(train_items: list[Item], val_items: list[Item]) -> str:
    """A hash of which images (name and size), captions and repeats a run trains and validates on."""
    digest = hashlib.sha256()
    for part, items in (("train", train_items), ("val", val_items)):
        for item in items:
            digest.update(
                f"{part}|{item.image.name}|{item.image.stat().st_size}|{item.caption}|{item.repeats}\n".encode()
            )
    return digest.hexdigest()
