"""setup -> train -> save: the whole training run, top to bottom.

The loop is flat on purpose (nanoGPT): one optimiser step per iteration, validation, early
stopping and checkpoints in plain sight, no callbacks.
"""

import contextlib
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch

from trilora.adapters.inject import adapter_state_dict, load_adapter_state_dict, of_part, with_part
from trilora.config import RunConfig, to_dict
from trilora.data.cache import encode_text, tokenize
from trilora.data.captions import transform_caption
from trilora.data.order import BatchOrder
from trilora.errors import Interrupted, UserError
from trilora.files import write_json
from trilora.run_folder import FolderLock, claim
from trilora.seeds import derive_seed
from trilora.training.checkpoint import (
    StopRequest,
    find_checkpoint,
    incompatible_changes,
    list_checkpoints,
    load_checkpoint,
    run_folder_of,
    save_checkpoint,
)
from trilora.training.distributed import Distributed, init_distributed
from trilora.training.ema import EMA
from trilora.training.export import (
    export_adapters,
    run_files,
    save_samples,
    write_adapter,
)
from trilora.training.losses import denoising_loss, min_snr_weights
from trilora.training.metrics import MetricsLog, plot_losses, read_metrics
from trilora.training.noise import training_noise
from trilora.training.optim import make_optimizer
from trilora.training.progress import Progress
from trilora.training.schedule import lr_at
from trilora.training.validation import EarlyStopping, mean_and_standard_error

log = logging.getLogger("trilora")


def train(config: RunConfig) -> dict:
    """Train into config.output, which this run holds locked from start to end (see run_folder.py)."""
    config.validate()
    source = find_checkpoint(config.checkpoint.resume) if config.checkpoint.resume else None
    resume = load_checkpoint(source) if source is not None else None
    if resume is not None:
        changed = incompatible_changes(resume["config"], to_dict(config))
        if changed:
            raise UserError(f"cannot resume with changed settings: {'; '.join(changed)}")
    dist = init_distributed()
    lock = claim_run_folder(config, source, dist)
    try:
        return run(config, resume, source, dist)
    finally:
        if lock is not None:
            lock.release()


def claim_run_folder(config: RunConfig, source: Path | None, dist: Distributed) -> FolderLock | None:
    """The main process claims the output folder; every process stops if it could not.

    `--resume` continues in the checkpoint's own run folder; given another --output, the run
    continues there instead (a new folder, as for a new run) and the original is left untouched.
    """
    output = Path(config.output)
    in_place = source is not None and output.resolve() == run_folder_of(source).resolve()
    error, lock = None, None
    if dist.main:
        hint = f"continue it with --resume {output}" if list_checkpoints(output) else "it cannot be resumed"
        try:
            lock = claim(output, run_files, "train", config.checkpoint.overwrite, in_place, hint)
        except UserError as refused:
            error = refused
    failed = torch.tensor([float(error is not None)])
    dist.sum_([failed])
    if error is not None:
        raise error
    if failed.item():
        raise UserError(f"the main process could not take the run folder {output}; see its message")
    return lock


def run(config: RunConfig, resume: dict | None, source: Path | None, dist: Distributed) -> dict:
    from diffusers import DDPMScheduler  # here, not at the top: a refused run stops in a second

    from trilora.training.setup import setup

    output = Path(config.output)
    opts, val_opts, ckpt_opts, data_opts = config.train, config.validation, config.checkpoint, config.data
    in_place = source is not None and output.resolve() == run_folder_of(source).resolve()
    if not dist.main:
        log.setLevel(logging.WARNING)  # one process tells the story
    torch.manual_seed(derive_seed(opts.seed, "init"))
    s = setup(config, dist)
    if resume is not None and resume["data"] != s.data_fingerprint:
        raise UserError(
            "cannot resume: the training or validation images or captions changed since the checkpoint"
        )
    if dist.main:  # after set-up: a start that fails on its data leaves no run behind to block a retry
        write_json(output / "config.json", to_dict(config))
    pipe, device = s.pipe, s.device
    unet, text_encoder = pipe.unet, pipe.text_encoder
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    models = {"unet": unet} | ({"text_encoder": text_encoder} if config.adapter.train_text_encoder else {})
    optimizer = make_optimizer(config, models, device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ema = EMA(params, opts.ema) if opts.ema else None
    log.info("training %s rank %d: %d tensors, %.2f M parameters, %d steps on %s",
             config.adapter.method, config.adapter.rank, len(params), sum(p.numel() for p in params) / 1e6,
             s.total_steps, device)  # fmt: skip
    autocast = torch.autocast(device.type, s.autocast or torch.float32, enabled=s.autocast is not None)
    for model in models.values():
        model.train()  # from_pretrained leaves models in eval mode; adapter dropout needs train mode

    def condition(batch: torch.Tensor) -> torch.Tensor:
        """Embeddings pass through; token ids go through the text encoder (with gradients when it trains)."""
        if batch.is_floating_point():
            return batch.to(device)
        with torch.set_grad_enabled(config.adapter.train_text_encoder and torch.is_grad_enabled()):
            return encode_text(text_encoder, batch.to(device))

    def captions(index: list[int], sample_ids: list[int]) -> torch.Tensor:
        """Captions of a batch: cached embeddings, or token ids of captions shuffled/dropped per sample."""
        if s.train_condition is not None:
            return s.train_condition[index]
        if not (data_opts.shuffle_captions or data_opts.caption_dropout):
            return tokenize(pipe.tokenizer, [s.train_items[i].caption for i in index])
        texts = [transform_caption(s.train_items[i].caption, random.Random(derive_seed(opts.seed, "caption", sample_id)),
                                   data_opts.shuffle_captions, data_opts.keep_tokens, data_opts.caption_dropout)
                 for i, sample_id in zip(index, sample_ids, strict=True)]  # fmt: skip
        return tokenize(pipe.tokenizer, texts)

    def adapter_state() -> dict[str, torch.Tensor]:
        return {k: v for part, m in models.items() for k, v in with_part(part, adapter_state_dict(m)).items()}

    def load_state(state: dict[str, torch.Tensor]) -> None:
        for part, model in models.items():
            load_adapter_state_dict(model, of_part(part, state))

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        """Each validation image at the K fixed timesteps with its fixed noise: one batch of K per image."""
        v = s.validation
        for m in models.values():
            m.eval()
        losses = []
        with autocast:
            for i, latent in enumerate(v.latents):
                k = len(v.timesteps)
                text = condition(v.condition[i : i + 1]).expand(k, -1, -1)
                latents = latent.to(device).expand(k, -1, -1, -1)
                losses.append(
                    denoising_loss(
                        unet, scheduler, latents, v.noise[i].to(device), v.timesteps.to(device), text
                    ).cpu()
                )
        for m in models.values():
            m.train()
        return mean_and_standard_error(torch.cat(losses))

    stopper = EarlyStopping(val_opts.patience, val_opts.min_delta)
    best_state, start_step = None, 0
    metrics = MetricsLog(output / "metrics.csv" if dist.main else None, resume["step"] if in_place else 0)
    if resume is not None:
        load_state(resume["adapter"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema:
            ema.load_state_dict(resume["ema"])
        stopper.__dict__.update(resume["stopper"])
        best_state, start_step = resume["best_state"], resume["step"]
        rows = resume.get("metrics")
        if rows is None:  # checkpoints written before the rows were kept in them
            csv_file = run_folder_of(source) / "metrics.csv"
            rows = read_metrics(csv_file) if csv_file.is_file() else []
        metrics.restore([row for row in rows if row["step"] <= start_step], to_tensorboard=not in_place)
        if dist.main and in_place:
            for later in [
                p for p in list_checkpoints(output) if int(p.name.removeprefix("step-")) > start_step
            ]:
                log.warning("removing %s: it continues the run past the checkpoint resumed from", later)
                shutil.rmtree(later, ignore_errors=True)
        if dist.main and not in_place and best_state is not None:
            write_adapter(output / "best" / "adapter.safetensors", best_state, config, stopper.best_step,
                          stopper.best_loss)  # fmt: skip
        log.info("resumed from step %d (%s) into %s", start_step, source, output)

    def checkpoint(step: int) -> Path | None:
        if not dist.main:
            return None
        state = {"step": step, "adapter": adapter_state(), "optimizer": optimizer.state_dict(),
                 "stopper": dict(vars(stopper)), "best_state": best_state, "config": to_dict(config),
                 "data": s.data_fingerprint, "ema": ema.state_dict() if ema else None,
                 "metrics": list(metrics.rows)}  # fmt: skip
        return save_checkpoint(output, step, state, ckpt_opts.keep_checkpoints)

    def sample(step: int) -> None:
        if not dist.main:
            return
        with ema.applied() if ema else contextlib.nullcontext():
            save_samples(pipe, val_opts, config, output / "samples" / f"step-{step:06d}", device, s.autocast)

    def evaluate(step: int) -> tuple[float | None, float | None]:
        nonlocal best_state
        if val_opts.sample_prompt:
            sample(step)
        if s.validation is None:
            return None, None
        with ema.applied() if ema else contextlib.nullcontext():
            val_loss, val_se = validate()
            if stopper.update(val_loss, step):
                best_state = adapter_state()
            if dist.main:
                write_adapter(output / "best" / "adapter.safetensors", best_state, config, step, val_loss)
        progress.note(
            f"step {step}: val_loss {val_loss:.5f} ± {val_se:.5f} (best {stopper.best_loss:.5f} at step {stopper.best_step})"
        )
        return val_loss, val_se

    progress = Progress(s.total_steps, start_step)
    order = BatchOrder([i.repeats for i in s.train_items], s.train_buckets, opts.batch_size, opts.seed)
    num_train_timesteps = scheduler.config.num_train_timesteps
    elapsed_before = metrics.rows[-1]["elapsed_s"] if metrics.rows else 0.0
    started = time.perf_counter() - (elapsed_before or 0.0)
    step, stopped_early, val_loss = start_step, stopper.should_stop, None
    if start_step == 0:
        val_loss, val_se = evaluate(0)
        metrics.write(step=0, val_loss=val_loss, val_loss_se=val_se, elapsed_s=0.0,
                      lr=lr_at(0, opts.lr, s.total_steps, opts.warmup_steps, opts.lr_scheduler))  # fmt: skip
    with StopRequest() as stop:
        last_step = start_step if stopped_early else s.total_steps  # a resumed run that had stopped early
        for step in range(start_step + 1, last_step + 1):
            lr = lr_at(step - 1, opts.lr, s.total_steps, opts.warmup_steps, opts.lr_scheduler)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_factor"]
            torch.manual_seed(derive_seed(opts.seed, "dropout", step))
            train_loss = torch.zeros((), device=device)
            for micro in range(opts.grad_accum):
                n = (step - 1) * opts.grad_accum + micro  # micro-batch number over the whole run
                index = order(n)  # the global batch; this process takes its shard
                local = dist.shard(
                    list(
                        zip(index, range(n * opts.batch_size, n * opts.batch_size + len(index)), strict=True)
                    )
                )
                if not local:
                    continue
                local_index, sample_ids = [i for i, _ in local], [j for _, j in local]
                latents = torch.stack([s.train_latents[i] for i in local_index]).to(device)
                noise, timesteps = training_noise(
                    opts.seed, sample_ids, latents.shape[1:], num_train_timesteps, opts.noise_offset
                )
                noise, timesteps = noise.to(device), timesteps.to(device)
                with autocast:
                    text = condition(captions(local_index, sample_ids))
                    losses = denoising_loss(unet, scheduler, latents, noise, timesteps, text)
                if opts.min_snr_gamma:
                    losses = losses * min_snr_weights(scheduler, timesteps, opts.min_snr_gamma)
                if any(s.train_items[i].is_reg for i in local_index):  # DreamBooth prior preservation
                    weights = [
                        data_opts.prior_loss_weight if s.train_items[i].is_reg else 1.0 for i in local_index
                    ]
                    losses = losses * torch.tensor(weights, device=device)
                loss = losses.sum() / (len(index) * opts.grad_accum)  # summed over processes: the global mean
                loss.backward()
                train_loss += loss.detach()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            dist.sum_([p.grad for p in params] + [train_loss])
            train_loss = train_loss.item()
            if not math.isfinite(train_loss):
                metrics.close()
                raise UserError(f"the training loss became {train_loss} at step {step}; lower --lr and resume "
                                f"from the last checkpoint (the best adapter so far is in {output / 'best'})")  # fmt: skip
            if opts.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema:
                ema.update()

            val_loss = val_se = None
            if step % val_opts.validate_every == 0 or step == s.total_steps:
                val_loss, val_se = evaluate(step)
            elif val_opts.sample_every and step % val_opts.sample_every == 0 and val_opts.sample_prompt:
                sample(step)
            metrics.write(step=step, train_loss=train_loss, val_loss=val_loss, val_loss_se=val_se, lr=lr,
                          elapsed_s=time.perf_counter() - started)  # fmt: skip
            progress.update(step, train_loss)
            stopped_early = stopper.should_stop
            if stopped_early:
                progress.note(
                    f"stopping early at step {step}: no improvement in {val_opts.patience} validations"
                )
            if ckpt_opts.checkpoint_every and step % ckpt_opts.checkpoint_every == 0 or stop.requested:
                saved = checkpoint(step)
            if stop.requested:
                progress.close()
                metrics.close()
                raise Interrupted(
                    f"interrupted at step {step}: saved {saved}; continue with --resume {output}"
                )
            if stopped_early:
                break
    progress.close()
    metrics.close()

    with ema.applied() if ema else contextlib.nullcontext():
        last_state = adapter_state()  # with --ema, the averaged weights are the product
    if not dist.main:
        return {"steps_run": step, "best_step": stopper.best_step, "exported": {}}
    write_adapter(
        output / "last" / "adapter.safetensors",
        last_state,
        config,
        step,
        val_loss if step > start_step else None,
    )
    use_best = config.export.export == "best" and best_state is not None
    if config.export.export == "best" and best_state is None:
        log.warning("no validation set: exporting the last adapter")
    load_state(best_state if use_best else last_state)
    exported_step = stopper.best_step if use_best else step
    exported = export_adapters(
        pipe, config, output, exported_step, stopper.best_loss if use_best else None, step
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
        "alpha": config.adapter.resolved_alpha,
        "conv_rank": config.adapter.conv_rank,
        "conv_alpha": config.adapter.resolved_conv_alpha,
        "steps_run": step,
        "best_step": stopper.best_step,
        "best_val_loss": stopper.best_loss if stopper.best_step is not None else None,
        "stopped_early": stopped_early,
        "exported": {k: str(v) for k, v in exported.items()},
        "exported_step": exported_step,
    }
    write_json(output / "summary.json", summary)
    return summary
