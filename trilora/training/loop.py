"""setup -> train -> save: the whole training run, top to bottom.

The loop is flat on purpose (nanoGPT): one optimiser step per iteration, validation, early
stopping and checkpoints in plain sight, no callbacks.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import TYPE_CHECKING

import torch

from trilora.config import SETTINGS_FILE, RunConfig, settings_toml, to_dict
from trilora.data.captions import transform_caption
from trilora.data.order import BatchOrder
from trilora.device import resolve_device
from trilora.errors import Interrupted, UserError, signal_name
from trilora.files import atomic_path, write_json, write_text
from trilora.run_folder import LOCK_NAME, FolderLock, claim
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
    kept_adapter,
    kept_steps,
    prune_kept,
    run_files,
    save_samples,
    write_adapter,
)
from trilora.training.losses import denoising_loss, min_snr_weights
from trilora.training.memory import refuse_absurd_memory, resolve_resolution
from trilora.training.metrics import MetricsLog, plot_losses, read_metrics
from trilora.training.noise import training_noise
from trilora.training.optim import make_optimizer
from trilora.training.progress import Progress
from trilora.training.readout import Readout, to_device
from trilora.training.schedule import lr_at
from trilora.training.sheet import SHEET, SHEET_FILE, column_path, save_column, sheet_steps, write_sheet
from trilora.training.signal import FindScorer
from trilora.training.state import TrainingState
from trilora.training.validation import EarlyStopping, by_timestep, mean_and_standard_error, signal_value

if TYPE_CHECKING:  # setup.py imports diffusers: a refused run should stop before that
    from trilora.training.setup import Setup

log = logging.getLogger("trilora")


def train(
    config: RunConfig, resumed: tuple[Path, dict] | None = None, find_scorer: FindScorer | None = None
) -> dict:
    """Train into config.output, which this run holds locked from start to end (see run_folder.py).

    `resumed`: the checkpoint of config.checkpoint.resume as (folder, state), where the caller has
    read it already (the CLI reads its config); else it is read here. `find_scorer`: what scores the
    generation stopping signal (trilora/scorers.py's `stopping_scorer` for the commands); without
    one, `--stop-on auto` follows the validation loss.
    """
    config.validate()
    resolve_resolution(config)
    if resumed is None and config.checkpoint.resume:
        source = find_checkpoint(config.checkpoint.resume)
        resumed = source, load_checkpoint(source)
    source, resume = resumed if resumed is not None and config.checkpoint.resume else (None, None)
    if resume is not None and config.train.steps is not None and config.train.steps < resume["step"]:
        raise UserError(f"--steps {config.train.steps} is below step {resume['step']}, which the checkpoint "
                        f"reached: nothing would be trained; give --steps above {resume['step']}")  # fmt: skip
    if resume is not None:
        changed = incompatible_changes(resume["config"], to_dict(config))
        if changed:
            raise UserError(f"cannot resume with changed settings: {'; '.join(changed)}")
    refuse_absurd_memory(config, resolve_device(config.train.device))
    # --resume continues in the checkpoint's own run folder, or (another --output) in a new one
    in_place = source is not None and Path(config.output).resolve() == run_folder_of(source).resolve()
    dist = init_distributed()
    output = Path(config.output)
    existed = output.exists()
    lock = claim_run_folder(config, in_place, dist)
    try:
        return run(config, resume, source, in_place, dist, find_scorer)
    finally:
        if lock is not None:
            unclaim_if_untouched(output, existed)  # while the lock is held: no other run can be in it
            lock.release()


def unclaim_if_untouched(output: Path, existed: bool) -> None:
    """A run that stopped before writing anything (bad input found in set-up, a Ctrl-C while loading)
    leaves the folder as it found it: its lock file goes, and the folder too if the run made it."""
    try:
        if {p.name for p in output.iterdir()} != {LOCK_NAME}:
            return
        (output / LOCK_NAME).unlink()
        if not existed:
            output.rmdir()
    except OSError:
        pass  # a folder another process writes into now, or gone: not ours to tidy


def claim_run_folder(config: RunConfig, in_place: bool, dist: Distributed) -> FolderLock | None:
    """The main process claims the output folder; every process stops if it could not.

    `in_place`: resuming in the checkpoint's own folder; a run continued into another --output
    claims it as a new run would, and the original is left untouched.
    """
    output = Path(config.output)
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


@dataclass
class Run:
    """What set-up built, fixed for the whole run: the context every step function reads."""

    config: RunConfig
    dist: Distributed
    output: Path
    setup: Setup
    scheduler: object  # a DDPMScheduler on the training device
    autocast: torch.autocast

    @property
    def device(self) -> torch.device:
        return self.setup.device


def run(
    config: RunConfig,
    resume: dict | None,
    source: Path | None,
    in_place: bool,
    dist: Distributed,
    find_scorer: FindScorer | None,
) -> dict:
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.training.setup import setup

    output = Path(config.output)
    opts, val_opts, ckpt_opts = config.train, config.validation, config.checkpoint
    if not dist.main:
        log.setLevel(logging.WARNING)  # one process tells the story
    torch.manual_seed(derive_seed(opts.seed, "init"))
    s = setup(config, dist, find_scorer)
    if resume is not None and resume["data"] != s.data_fingerprint:
        raise UserError(
            "cannot resume: the training or validation images or captions changed since the checkpoint"
        )
    if dist.main:  # after set-up: a start that fails on its data leaves no run behind to block a retry
        write_json(output / "config.json", to_dict(config))
        write_text(output / SETTINGS_FILE, settings_toml(config, "train"))
    r = Run(config, dist, output, s, training_scheduler(s), torch.autocast(s.device.type, s.autocast or torch.float32,
                                                                          enabled=s.autocast is not None))  # fmt: skip
    state = new_state(r, resume["step"] if in_place else 0)
    if resume is not None:
        restore(r, state, resume, source, in_place)
    start_step = state.step
    progress = Progress(s.total_steps, start_step)
    order = BatchOrder([i.repeats for i in s.train_items], s.train_buckets, opts.batch_size, opts.seed)
    elapsed_before = state.metrics.rows[-1]["elapsed_s"] if state.metrics.rows else None
    started = time.perf_counter() - (elapsed_before or 0.0)
    stopped_early, measured = state.stopper.should_stop, {}
    if start_step == 0:
        measured = evaluate(r, state, progress)
        state.metrics.write(step=0, elapsed_s=0.0, lr=learning_rate(r, 0), **measured)
    rows = StepRows(r, state, progress, started)
    with StopRequest() as stop:
        last_step = start_step if stopped_early else s.total_steps  # a resumed run that had stopped early
        for step in range(start_step + 1, last_step + 1):
            lr = learning_rate(r, step - 1)
            loss = train_step(r, state, order, step, lr)  # queued on the device, not waited for
            rows.push(step, lr, loss)  # writes the previous step's row: its loss has arrived by now
            state.step = step
            if step % val_opts.validate_every == 0 or step == s.total_steps:
                rows.loss()  # a non-finite loss stops the run here, before validation writes best/
                measured = evaluate(r, state, progress)
                rows.write(**measured)
            elif val_opts.sample_every and step % val_opts.sample_every == 0 and val_opts.sample_prompt:
                sample(r, state)
            stopped_early = state.stopper.should_stop
            if stopped_early:
                progress.note(
                    f"stopping early at step {step}: no improvement in {val_opts.patience} validations"
                )
            if ckpt_opts.checkpoint_every and step % ckpt_opts.checkpoint_every == 0 or stop.requested:
                rows.write()  # a checkpoint holds the metrics rows up to its step
                saved = checkpoint(r, state)
            if stop.requested:
                progress.close()
                state.metrics.close()
                name = signal_name(stop.signum)
                validated = state.metrics.rows and state.metrics.rows[-1].get("val_loss") is not None
                val_loss = measured.get("val_loss") if validated else None
                summary = finish(r, state, stopped_early, val_loss, interrupted_by=Signals(stop.signum).name)
                done = f"saved {saved}" + (f"; exported the adapter of step {summary['exported_step']} to "
                                           f"{summary['exported']['kohya']}" if summary["exported"] else "")  # fmt: skip
                raise Interrupted(
                    f"{name} at step {step}: {done}; continue with --resume {output}", stop.signum
                )
            if stopped_early:
                break
        rows.write()
    progress.close()
    state.metrics.close()
    return finish(r, state, stopped_early, measured.get("val_loss") if state.step > start_step else None)


class StepRows:
    """Each step's metrics row and progress line, written once its loss is on the host.

    The loss of step k is read after step k+1 is queued (readout.py), so the device never idles
    while the host waits for it; a validation, a checkpoint and the end of the run read at once.
    """

    def __init__(self, r: Run, state: TrainingState, progress: Progress, started: float):
        self.r, self.state, self.progress, self.started = r, state, progress, started
        self.pending: tuple[int, float, Readout] | None = None  # (step, lr, its loss on the way)

    def push(self, step: int, lr: float, loss: torch.Tensor) -> None:
        self.write()
        self.pending = step, lr, Readout(loss)

    def loss(self) -> float:
        """The pending step's loss. A non-finite loss stops the run before anything more is saved,
        so the weights it spoilt in memory are never written."""
        step, _, readout = self.pending
        value = readout.value()
        if not math.isfinite(value):
            self.state.metrics.close()
            raise UserError(f"the training loss became {value} at step {step}; lower --lr and resume from "
                            f"the last checkpoint (the best adapter so far is in {self.r.output / 'best'})")  # fmt: skip
        return value

    def write(self, **measured) -> None:
        """The pending step's row; its time is when its loss was ready, or now after a validation."""
        if self.pending is None:
            return
        loss, (step, lr, readout) = self.loss(), self.pending
        at = time.perf_counter() if measured else readout.ready_at
        self.state.metrics.write(step=step, train_loss=loss, lr=lr, elapsed_s=at - self.started, **measured)
        self.progress.update(step, loss)
        self.pending = None


def training_scheduler(s: Setup):
    from diffusers import DDPMScheduler  # here, not at the top: a refused run stops in a second

    scheduler = DDPMScheduler.from_config(s.pipe.scheduler.config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(s.device)
    return scheduler


def new_state(r: Run, metrics_start: int) -> TrainingState:
    """The models in train mode, the optimizer, EMA, early stopping and the metrics log."""
    config, pipe = r.config, r.setup.pipe
    texts = r.setup.base.family.text_encoders if config.adapter.train_text_encoder else ()
    models = {"unet": pipe.unet} | {part: getattr(pipe, part) for part in texts}
    optimizer = make_optimizer(config, models, r.device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    log.info("training %s rank %d: %d tensors, %.2f M parameters, %d steps on %s",
             config.adapter.method, config.adapter.rank, len(params), sum(p.numel() for p in params) / 1e6,
             r.setup.total_steps, r.device)  # fmt: skip
    for model in models.values():
        model.train()  # from_pretrained leaves models in eval mode; adapter dropout needs train mode
    metrics = MetricsLog(r.output / "metrics.csv" if r.dist.main else None, metrics_start)
    v = config.validation
    stopper = EarlyStopping(
        v.patience, v.min_delta, margin=r.setup.stop_on == "val_loss_se", window=v.stop_window
    )
    ema = EMA(params, config.train.ema) if config.train.ema else None
    return TrainingState(models, optimizer, stopper, metrics, ema)


def learning_rate(r: Run, step: int) -> float:
    opts = r.config.train
    return lr_at(step, opts.lr, r.setup.total_steps, opts.warmup_steps, opts.lr_scheduler)


def restore(r: Run, state: TrainingState, resume: dict, source: Path, in_place: bool) -> None:
    """Continue from a checkpoint: in its own folder (later checkpoints and kept adapters of an
    abandoned continuation go), or in a new folder (the metrics rows, the best adapter and the kept
    adapters so far are copied there)."""
    state.load_state_dict(resume)
    rows = resume.get("metrics")
    if rows is None:  # checkpoints written before the rows were kept in them
        csv_file = run_folder_of(source) / "metrics.csv"
        rows = read_metrics(csv_file) if csv_file.is_file() else []
    state.metrics.restore([row for row in rows if row["step"] <= state.step], to_tensorboard=not in_place)
    if r.dist.main and in_place:
        for later in [
            p for p in list_checkpoints(r.output) if int(p.name.removeprefix("step-")) > state.step
        ]:
            log.warning("removing %s: it continues the run past the checkpoint resumed from", later)
            shutil.rmtree(later, ignore_errors=True)
        for later in [kept_adapter(r.output, step) for step in kept_steps(r.output) if step > state.step]:
            later.unlink(missing_ok=True)  # kept adapters of the abandoned continuation
        for later in [column_path(r.output, step) for step in sheet_steps(r.output) if step > state.step]:
            later.unlink(missing_ok=True)  # and its contact-sheet columns
    if r.dist.main and not in_place and state.best_state is not None:
        write_adapter(r.output / "best" / "adapter.safetensors", state.best_state, r.config, state.stopper.best_step,
                      state.stopper.best_val_loss)  # fmt: skip
    if r.dist.main and not in_place:  # the kept adapters up to here, so the new run's steps are all browsable
        earlier = run_folder_of(source)
        for step in (step for step in kept_steps(earlier) if step <= state.step):
            with atomic_path(kept_adapter(r.output, step)) as temporary:
                shutil.copyfile(kept_adapter(earlier, step), temporary)
        for step in (step for step in sheet_steps(earlier) if step <= state.step):
            with atomic_path(column_path(r.output, step)) as temporary:
                shutil.copyfile(column_path(earlier, step), temporary)
        if (earlier / SHEET / "prompts.txt").is_file():
            write_text(r.output / SHEET / "prompts.txt", (earlier / SHEET / "prompts.txt").read_text())
    log.info("resumed from step %d (%s) into %s", state.step, source, r.output)


def checkpoint(r: Run, state: TrainingState) -> Path | None:
    if not r.dist.main:
        return None
    full = state.state_dict() | {"config": to_dict(r.config), "data": r.setup.data_fingerprint}
    return save_checkpoint(r.output, state.step, full, r.config.checkpoint.keep_checkpoints)


def condition(r: Run, batch: torch.Tensor) -> torch.Tensor:
    """Embeddings pass through; token ids go through the text encoder (with gradients when it trains)."""
    if batch.is_floating_point():
        return to_device(batch, r.device)
    with torch.set_grad_enabled(r.config.adapter.train_text_encoder and torch.is_grad_enabled()):
        return r.setup.base.family.encode(r.setup.pipe, to_device(batch, r.device))


def captions(r: Run, index: list[int], sample_ids: list[int]) -> torch.Tensor:
    """Captions of a batch: cached embeddings, or token ids of captions shuffled/dropped per sample."""
    s, data = r.setup, r.config.data
    if s.train_condition is not None:  # rows one by one: a list index would be copied to the device
        return torch.stack([s.train_condition[i] for i in index])
    if not (data.shuffle_captions or data.caption_dropout):
        return s.base.family.tokenize(s.pipe, [s.train_items[i].caption for i in index])
    texts = [transform_caption(s.train_items[i].caption, random.Random(derive_seed(r.config.train.seed, "caption", j)),
                               data.shuffle_captions, data.keep_tokens, data.caption_dropout)
             for i, j in zip(index, sample_ids, strict=True)]  # fmt: skip
    return s.base.family.tokenize(s.pipe, texts)


def train_step(r: Run, state: TrainingState, order: BatchOrder, step: int, lr: float) -> torch.Tensor:
    """One optimiser step: grad_accum micro-batches (this process's shard of each), the gradients
    summed over processes, clipping, AdamW, EMA. The mean training loss of the global batch, on the
    device: nothing in a step makes the host wait for the device (tests/training/test_fast.py)."""
    opts, s, device = r.config.train, r.setup, r.device
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group["lr_factor"]
    torch.manual_seed(derive_seed(opts.seed, "dropout", step))
    if (
        opts.cuda_graphs and device.type == "cuda"
    ):  # a new step: the last one's graph outputs may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    train_loss = torch.zeros((), device=device)
    for micro in range(opts.grad_accum):
        n = (step - 1) * opts.grad_accum + micro  # micro-batch number over the whole run
        index = order(n)  # the global batch; this process takes its shard
        local = r.dist.shard(
            list(zip(index, range(n * opts.batch_size, n * opts.batch_size + len(index)), strict=True))
        )
        if not local:
            continue
        local_index, sample_ids = [i for i, _ in local], [j for _, j in local]
        latents = to_device(torch.stack([s.train_latents[i] for i in local_index]), device)  # (B, C, h, w)
        noise, timesteps = training_noise(opts.seed, sample_ids, latents.shape[1:],
                                          r.scheduler.config.num_train_timesteps, opts.noise_offset)  # fmt: skip
        noise, timesteps = to_device(noise, device), to_device(timesteps, device)
        sizes = to_device(torch.stack([s.train_sizes[i] for i in local_index]), device)  # (B, 6)
        with r.autocast:
            text = condition(r, captions(r, local_index, sample_ids))
            denoise = s.base.family.denoise
            losses = denoising_loss(
                denoise, s.pipe.unet, r.scheduler, latents, noise, timesteps, text, sizes
            )  # (B,)
        if opts.min_snr_gamma:
            losses = losses * min_snr_weights(r.scheduler, timesteps, opts.min_snr_gamma)
        if any(s.train_items[i].is_reg for i in local_index):  # DreamBooth prior preservation
            weights = [
                r.config.data.prior_loss_weight if s.train_items[i].is_reg else 1.0 for i in local_index
            ]
            losses = losses * to_device(torch.tensor(weights), device)
        loss = losses.sum() / (len(index) * opts.grad_accum)  # summed over processes: the global mean
        loss.backward()
        train_loss += loss.detach()
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    r.dist.sum_([p.grad for p in params] + [train_loss])
    if opts.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema:
        state.ema.update()
    return train_loss


@torch.no_grad()
def validate(r: Run, state: TrainingState) -> tuple[float, float, dict[int, float]]:
    """Each validation image at the K fixed timesteps with its fixed noise: one batch of K per image.
    The mean loss, its standard error, and the mean loss at each timestep."""
    v, device = r.setup.validation, r.device
    for m in state.models.values():
        m.eval()
    losses = []
    with r.autocast:
        for i, latent in enumerate(v.latents):
            k = len(v.timesteps)
            text = condition(r, v.condition[i : i + 1]).expand(k, -1, -1)
            latents = latent.to(device).expand(k, -1, -1, -1)  # (K, C, h, w)
            noise, timesteps = v.noise[i].to(device), v.timesteps.to(device)
            sizes = v.sizes[i : i + 1].to(device).expand(k, -1)
            denoise = r.setup.base.family.denoise
            losses.append(
                denoising_loss(
                    denoise, r.setup.pipe.unet, r.scheduler, latents, noise, timesteps, text, sizes
                )
            )
    for m in state.models.values():
        m.train()
    losses = torch.stack(losses).cpu()  # (images, K): one wait for the device per validation
    return *mean_and_standard_error(losses.flatten()), by_timestep(losses, v.timesteps)


def sample(r: Run, state: TrainingState) -> list:
    if not r.dist.main:
        return []
    with state.averaged():
        folder = r.output / "samples" / f"step-{state.step:06d}"
        return save_samples(r.setup.pipe, r.config.validation, r.config, folder, r.device, r.setup.autocast)


def evaluate(r: Run, state: TrainingState, progress: Progress) -> dict:
    """Samples, then the validation loss (and the generation signal); a new best of what stopping
    follows becomes the best adapter (written to best/). Returns the metrics row's measurements."""
    samples = sample(r, state) if r.config.validation.sample_prompt else []
    if r.setup.validation is None:
        return {}
    stopper, signal = state.stopper, None
    # the contact sheet's column: the signal's held-out prompts, or else the samples
    column = (samples, list(r.config.validation.sample_prompt))
    with state.averaged():
        val_loss, val_se, by_t = validate(r, state)
        if r.setup.signal is not None:
            signal, images = r.setup.signal.measure(
                r.setup.pipe, r.config.data.resolution, r.device, r.setup.autocast
            )
            column = (images, r.setup.signal.prompts)
            value, se = -signal, 0.0  # higher is better; the stopper minimises
        else:
            value = signal_value(r.setup.stop_on, val_loss, by_t, r.scheduler.config.num_train_timesteps)
            se = val_se
        if stopper.update(value, state.step, se, val_loss):
            state.best_state = state.adapter_state()
            if r.dist.main:
                write_adapter(
                    r.output / "best" / "adapter.safetensors",
                    state.best_state,
                    r.config,
                    state.step,
                    val_loss,
                )
        if r.dist.main:  # every validated step's adapter, with its scores, for `trilora export --step`
            base = r.setup.base
            write_adapter(kept_adapter(r.output, state.step), state.adapter_state(), r.config, state.step, val_loss,
                          signal=signal, family=base.family.name, prediction_type=base.prediction_type)  # fmt: skip
            prune_kept(r.output, r.config.checkpoint.keep_adapters, stopper.best_step)
            if column[0]:
                save_column(r.output, state.step, *column)
                now = {"step": state.step, "val_loss": val_loss, "signal": signal}
                write_sheet(r.output, [*state.metrics.rows, now], stopper.best_step)
    shown = "" if signal is None else f", signal {signal:.3f}"
    window = f" (mean of {stopper.window})" if stopper.window > 1 else ""
    best = (f"val_loss {stopper.best_val_loss:.5f}" if signal is None else
            f"signal {-stopper.best_loss:.3f}{window}, val_loss {stopper.best_val_loss:.5f}")  # fmt: skip
    progress.note(
        f"step {state.step}: val_loss {val_loss:.5f} ± {val_se:.5f}{shown} (best step {stopper.best_step}: {best})"
    )
    return {"val_loss": val_loss, "val_loss_se": val_se, "val_loss_by_t": by_t, "signal": signal}


def finish(
    r: Run,
    state: TrainingState,
    stopped_early: bool,
    last_val_loss: float | None,
    interrupted_by: str | None = None,
) -> dict:
    """last/ and the exports (of the best adapter unless --export last), loss.png, summary.json.

    A run stopped by a signal (`interrupted_by`) exports too, after its checkpoint: the best adapter so
    far, or the last one while no trained step has been validated yet (the best of step 0 is the base).
    Its summary says so, and --resume goes on from the checkpoint as if nothing had been exported."""
    config, step, stopper = r.config, state.step, state.stopper
    if r.dist.main and step not in {int(p.name.removeprefix("step-")) for p in list_checkpoints(r.output)}:
        checkpoint(r, state)  # first: a kill during the exports never leaves a run with nothing to resume
    with state.averaged():
        last_state = state.adapter_state()  # with --ema, the averaged weights are the product
    if not r.dist.main:
        return {"steps_run": step, "best_step": stopper.best_step, "exported": {}}
    write_adapter(r.output / "last" / "adapter.safetensors", last_state, config, step, last_val_loss)
    use_best = config.export.export == "best" and state.best_state is not None
    if config.export.export == "best" and r.setup.validation is None:
        log.warning("no validation set: exporting the last adapter")
    elif use_best and interrupted_by and not stopper.best_step:
        use_best = False
        log.info("no trained step validated yet: exporting the last adapter")
    state.load_adapter_state(state.best_state if use_best else last_state)
    exported_step = stopper.best_step if use_best else step
    exported = export_adapters(r.setup.base, config, r.output, exported_step, stopper.best_val_loss if use_best else None,
                               step)  # fmt: skip
    plot_losses(state.metrics.rows, r.output / "loss.png", stopper.best_step,
                f"{config.adapter.method} rank {config.adapter.rank}")  # fmt: skip
    summary = {
        "method": config.adapter.method,
        "rank": config.adapter.rank,
        "alpha": config.adapter.resolved_alpha,
        "conv_rank": config.adapter.conv_rank,
        "conv_alpha": config.adapter.resolved_conv_alpha,
        "steps_run": step,
        "best_step": stopper.best_step,
        "best_val_loss": stopper.best_val_loss if stopper.best_step is not None else None,
        "stop_on": r.setup.stop_on,
        "stopped_early": stopped_early,
        "interrupted_by": interrupted_by,
        "exported": {k: str(v) for k, v in exported.items()},
        "exported_step": exported_step,
        "contact_sheet": str(r.output / SHEET_FILE) if (r.output / SHEET_FILE).is_file() else None,
    }
    write_json(r.output / "summary.json", summary)
    return summary
