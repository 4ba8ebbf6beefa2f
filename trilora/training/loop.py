"""setup -> train -> save: the whole training run, top to bottom.

The loop is flat on purpose (nanoGPT): one optimiser step per iteration, validation and early
stopping in plain sight, no callbacks.
"""

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trilora.adapters.inject import (
    adapter_state_dict,
    add_adapters,
    load_adapter_state_dict,
    text_encoder_targets,
    trainable_parameters,
    unet_targets,
)
from trilora.base.load import load_pipeline
from trilora.config import RunConfig, to_dict
from trilora.data.cache import encode_captions, encode_latents, encode_text, tokenize
from trilora.data.folder import Item, load_images, scan, split_validation
from trilora.errors import UserError
from trilora.training.export import export_adapters, save_samples, write_adapter
from trilora.training.losses import denoising_loss
from trilora.training.metrics import MetricsLog, plot_losses
from trilora.training.schedule import lr_at
from trilora.training.validation import (
    EarlyStopping,
    ValidationSet,
    make_validation_set,
    mean_and_standard_error,
)

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
    validation: ValidationSet | None
    total_steps: int


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
    add_adapters(pipe.unet, unet_targets(pipe.unet), adapter.method, adapter.rank, alpha, adapter.sigma_init)
    if adapter.train_text_encoder:
        pipe.text_encoder.to(device=device, dtype=weight_dtype)
        targets = text_encoder_targets(pipe.text_encoder)
        add_adapters(pipe.text_encoder, targets, adapter.method, adapter.rank, alpha, adapter.sigma_init)
    if opts.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()

    validation = None
    if val_items:
        num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        validation = make_validation_set(
            val_latents, val_condition, config.validation.val_timesteps, num_train_timesteps, opts.seed
        )
    samples_per_epoch = sum(i.repeats for i in train_items)
    steps_per_epoch = math.ceil(samples_per_epoch / (opts.batch_size * opts.grad_accum))
    total_steps = opts.steps or (opts.epochs * steps_per_epoch if opts.epochs else 1000)
    return Setup(pipe, device, autocast, train_items, train_latents, train_condition, validation, total_steps)


def batches(items: list[Item], batch_size: int, seed: int):
    """Endless batches of indices into `items`; each epoch is a fresh shuffle, repeats included."""
    expanded = torch.tensor([i for i, item in enumerate(items) for _ in range(item.repeats)])
    epoch = 0
    while True:
        order = expanded[torch.randperm(len(expanded), generator=torch.Generator().manual_seed(seed + epoch))]
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        epoch += 1


def train(config: RunConfig) -> dict:
    config.validate()
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    torch.manual_seed(config.train.seed)
    s = setup(config)
    pipe, device, opts, val_opts = s.pipe, s.device, config.train, config.validation
    unet, text_encoder = pipe.unet, pipe.text_encoder
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    models = [unet] + ([text_encoder] if config.adapter.train_text_encoder else [])
    params = [p for m in models for p in trainable_parameters(m)]
    log.info("training %s rank %d on %d tensors (%.2f M parameters) for %d steps on %s",
             config.adapter.method, config.adapter.rank, len(params), sum(p.numel() for p in params) / 1e6,
             s.total_steps, device)  # fmt: skip
    optimizer = torch.optim.AdamW(
        params,
        lr=opts.lr,
        weight_decay=opts.weight_decay,
        **({"fused": True} if device.type == "cuda" else {}),
    )

    def condition(batch: torch.Tensor) -> torch.Tensor:
        if config.adapter.train_text_encoder:
            return encode_text(text_encoder, batch)
        return batch.to(device)

    def validate() -> tuple[float, float]:
        v = s.validation
        for m in models:
            m.eval()
        losses = []
        with (
            torch.no_grad(),
            torch.autocast(device.type, s.autocast or torch.float32, enabled=bool(s.autocast)),
        ):
            for k, t in enumerate(v.timesteps):
                timesteps = t.repeat(len(v.latents)).to(device)
                losses.append(denoising_loss(unet, scheduler, v.latents.to(device), v.noise[:, k].to(device),
                                             timesteps, condition(v.condition)).float().cpu())  # fmt: skip
        for m in models:
            m.train()
        return mean_and_standard_error(torch.cat(losses))

    def state() -> dict[str, torch.Tensor]:
        out = {f"unet.{k}": v for k, v in adapter_state_dict(unet).items()}
        if config.adapter.train_text_encoder:
            out |= {f"text_encoder.{k}": v for k, v in adapter_state_dict(text_encoder).items()}
        return out

    metrics = MetricsLog(output / "metrics.csv")
    stopper = EarlyStopping(val_opts.patience, val_opts.min_delta)
    best_state, stopped_early, step = None, False, 0
    generator = torch.Generator().manual_seed(opts.seed)
    data = batches(s.train_items, opts.batch_size, opts.seed)
    num_train_timesteps = scheduler.config.num_train_timesteps
    progress = Progress(s.total_steps)
    started = time.perf_counter()

    def evaluate(step: int) -> tuple[float | None, float | None]:
        nonlocal best_state
        if s.validation is None:
            return None, None
        val_loss, val_se = validate()
        if stopper.update(val_loss, step):
            best_state = state()
            write_adapter(output / "best" / "adapter.safetensors", best_state, config, step, val_loss)
        if val_opts.sample_prompt:
            save_samples(pipe, val_opts, config, output / "samples" / f"step-{step:06d}", device, s.autocast)
        progress.note(
            f"step {step}: val_loss {val_loss:.5f} ± {val_se:.5f} (best {stopper.best_loss:.5f} at {stopper.best_step})"
        )
        return val_loss, val_se

    val_loss, val_se = evaluate(0)
    metrics.write(
        step=0,
        val_loss=val_loss,
        val_loss_se=val_se,
        lr=lr_at(0, opts.lr, s.total_steps, opts.warmup_steps, opts.lr_scheduler),
        elapsed_s=0.0,
    )
    for step in range(1, s.total_steps + 1):
        lr = lr_at(step - 1, opts.lr, s.total_steps, opts.warmup_steps, opts.lr_scheduler)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss = 0.0
        for _ in range(opts.grad_accum):
            index = next(data)
            latents = s.train_latents[index].to(device)
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, num_train_timesteps, (len(index),), generator=generator).to(device)
            with torch.autocast(device.type, s.autocast or torch.float32, enabled=bool(s.autocast)):
                loss = denoising_loss(
                    unet, scheduler, latents, noise, timesteps, condition(s.train_condition[index])
                ).mean()
            (loss / opts.grad_accum).backward()
            train_loss += loss.item() / opts.grad_accum
        if not math.isfinite(train_loss):
            raise UserError(
                f"the training loss became {train_loss} at step {step}; lower --lr "
                f"(the best adapter so far is in {output / 'best'})"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        val_loss = val_se = None
        if step % val_opts.validate_every == 0 or step == s.total_steps:
            val_loss, val_se = evaluate(step)
        metrics.write(step=step, train_loss=train_loss, val_loss=val_loss, val_loss_se=val_se, lr=lr,
                      elapsed_s=time.perf_counter() - started)  # fmt: skip
        progress.update(step, train_loss)
        if stopper.should_stop:
            stopped_early = True
            progress.note(f"stopping early at step {step}: no improvement in {val_opts.patience} validations")
            break
    progress.close()

    last_state = state()
    write_adapter(output / "last" / "adapter.safetensors", last_state, config, step, val_loss)
    use_best = config.export.export == "best" and best_state is not None
    if config.export.export == "best" and best_state is None:
        log.warning("no validation set: exporting the last adapter")
    final_state = best_state if use_best else last_state
    for part, model in [("unet", unet), ("text_encoder", text_encoder)][: len(models)]:
        load_adapter_state_dict(
            model, {k[len(part) + 1 :]: v for k, v in final_state.items() if k.startswith(part + ".")}
        )
    exported = export_adapters(
        pipe,
        config,
        output,
        stopper.best_step if use_best else step,
        stopper.best_loss if use_best else None,
        step,
    )
    plot_losses(
        metrics.rows,
        output / "loss.png",
        stopper.best_step,
        f"{config.adapter.method} rank {config.adapter.rank}",
    )
    summary = {
        "method": config.adapter.method,
        "rank": config.adapter.rank,
        "alpha": config.adapter.alpha if config.adapter.alpha is not None else config.adapter.rank,
        "steps_run": step,
        "best_step": stopper.best_step,
        "best_val_loss": stopper.best_loss if stopper.best_step is not None else None,
        "stopped_early": stopped_early,
        "exported": {k: str(v) for k, v in exported.items()},
        "exported_step": stopper.best_step if use_best else step,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class Progress:
    """A tqdm bar on a terminal; plain log lines (about 20 per run) otherwise."""

    def __init__(self, total: int):
        self.total, self.every = total, max(1, total // 20)
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / step * (self.total - step)
            log.info("step %d/%d  loss %.5f  elapsed %.0fs  eta %.0fs", step, self.total, loss, elapsed, eta)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
