"""`trilora bench toy`: LoRA against TriLoRA in the toy world, and whether the validation loss
stops training at the right point.

The task (trilora.toy.evaluate): learn ADAPTER_STYLE, which the toy base model never saw, from
TRAIN_IMAGES renders in three wall colours; VAL_IMAGES renders of the same style and colours from
another render seed give the validation loss. Each (method, rank, seed) trains for `steps` steps
with a validation and a checkpoint every `eval_every` steps and patience 0, so that it runs to the
end. Every checkpoint is then scored on `prompts` test prompts of the style in all colours, floors
and times (evaluate.score: style hit, prompt fidelity, colour, toy FID against fresh renders of the
same prompts, distance to the nearest training image). The base model without adapter is scored on
the same prompts; its FID is NFID's denominator (NFID = FID / FID of the base, as in the TriLoRA paper).

Early stopping is replayed, not run. Noise, timesteps, data order and adapter dropout are functions
of (seed, step), so a run with patience P is our run, step for step, up to where it stops; the
trainer's own EarlyStopping replayed on metrics.csv (trilora.toy.report) gives that step and the
checkpoint it would export ("best"), and the rest of our run shows what training on would have given.
"""

import copy
import logging
import shlex
import time
from itertools import product
from pathlib import Path

from PIL import Image

from trilora.config import SETTINGS_FILE, BenchConfig, RunConfig, Tree, from_dict, settings_toml
from trilora.files import write_text
from trilora.toy.evaluate import (
    ADAPTER_COLOURS,
    ADAPTER_STYLE,
    GUIDANCE,
    STEPS,
    adapter_dataset,
    generate_images,
    prompt_set,
    reference_renders,
    score,
)

log = logging.getLogger("trilora")

TRAIN_IMAGES = 30
VAL_IMAGES = 10
TRAIN_SEED, VAL_SEED = 0, 1  # render seeds of the training and validation sets
PROMPT_SEED = 2  # the test prompts (evaluate.prompt_set)
IMAGE_SEED = 0  # image k from latent seed IMAGE_SEED + k; also the reference renders' seed
RESOLUTION = 32
BATCH_SIZE = 4
VAL_TIMESTEPS = 8


def bench_command(tree: Tree) -> dict:
    settings = tree.bench
    results = run_bench(settings)
    print(f"report: {Path(settings.output) / 'report.md'} ({results['seconds']['total']:.0f} s)")
    return results


def run_bench(settings: BenchConfig) -> dict:
    """Train and score every (method, rank, seed); write report.md, plots/, results.json and
    settings.toml to settings.output, which the bench holds locked; an earlier bench there is
    deleted first only with settings.overwrite."""
    from trilora.run_folder import claim
    from trilora.toy.base import toy_base

    settings.methods, settings.ranks = (
        list(dict.fromkeys(settings.methods)),
        list(dict.fromkeys(settings.ranks)),
    )
    settings.validate()
    base = toy_base(settings.base)
    output = Path(settings.output)
    lock = claim(
        output,
        bench_files,
        "bench toy",
        settings.overwrite,
        False,
        "its report is report.md",
        what="a benchmark",
    )
    try:
        write_text(output / SETTINGS_FILE, settings_toml(Tree(bench=settings), "bench"))
        s = settings
        return bench_locked(
            output, s.methods, s.ranks, s.seeds, s.steps, s.eval_every, s.prompts, base, s.lr, s.patience
        )
    finally:
        lock.release()


BENCH_FILES = ("report.md", "results.json", "plots", "runs", "data", SETTINGS_FILE)


def bench_files(folder: Path) -> list[Path]:
    return [folder / name for name in BENCH_FILES if (folder / name).exists()]


def bench_locked(output: Path, methods: list[str], ranks: list[int], seeds: int, steps: int, eval_every: int,
                 prompts: int, base: Path, lr: float, patience: int) -> dict:  # fmt: skip
    from trilora.toy.report import analyse_run, summarise, write_report
    from trilora.training.loop import train

    started = time.perf_counter()
    adapter_dataset(output / "data" / "train", TRAIN_IMAGES, TRAIN_SEED)
    adapter_dataset(output / "data" / "val", VAL_IMAGES, VAL_SEED)
    runs, configs = [], {}
    for method, rank, seed in product(methods, ranks, range(seeds)):
        folder = output / "runs" / f"{method}-r{rank}-s{seed}"
        log.info("bench: training %s rank %d seed %d", method, rank, seed)
        run_started = time.perf_counter()
        config = configs[method, rank] = bench_config(
            output, folder, base, method, rank, seed, steps, eval_every, lr
        )
        train(config)
        runs.append({"method": method, "rank": rank, "seed": seed, "folder": str(folder.relative_to(output)),
                     "train_seconds": time.perf_counter() - run_started,
                     "validations": read_validations(folder / "metrics.csv")})  # fmt: skip
    trained = time.perf_counter()
    base_scores = evaluate_runs(output, base, runs, configs, prompts)
    evaluated = time.perf_counter()
    runs = [analyse_run(run, patience) for run in runs]
    settings = dict(
        methods=methods, ranks=ranks, seeds=seeds, steps=steps, eval_every=eval_every, prompts=prompts,
        base=str(base), lr=lr, patience=patience, batch_size=BATCH_SIZE, train_images=TRAIN_IMAGES,
        val_images=VAL_IMAGES, val_timesteps=VAL_TIMESTEPS, style=ADAPTER_STYLE,
        train_colours=list(ADAPTER_COLOURS), prompt_seed=PROMPT_SEED, image_seed=IMAGE_SEED, sample_steps=STEPS,
        guidance=GUIDANCE,
    )  # fmt: skip
    results = {
        "command": command_line(output, settings),
        "settings": settings,
        "base": base_scores,
        "runs": runs,
        "summary": summarise(runs),
        "seconds": {"train": trained - started, "evaluate": evaluated - trained},
    }
    results["seconds"]["total"] = time.perf_counter() - started
    write_report(output, results)
    return results


def bench_config(
    output: Path,
    folder: Path,
    base: Path,
    method: str,
    rank: int,
    seed: int,
    steps: int,
    eval_every: int,
    lr: float,
) -> RunConfig:
    """One run: a checkpoint at every validation, all kept, and no early stop (it is replayed)."""
    return from_dict(
        {
            "output": str(folder),
            "model": {"base": str(base)},
            "data": {
                "data": str(output / "data" / "train"),
                "val_data": str(output / "data" / "val"),
                "resolution": RESOLUTION,
            },  # fmt: skip
            "adapter": {"method": method, "rank": rank},
            "train": {"lr": lr, "batch_size": BATCH_SIZE, "steps": steps, "seed": seed},
            "validation": {"validate_every": eval_every, "patience": 0, "val_timesteps": VAL_TIMESTEPS},
            "checkpoint": {"checkpoint_every": eval_every, "keep_checkpoints": steps // eval_every},
            "export": {"name": f"{method}-r{rank}-s{seed}"},
        },
        source="bench",
    )


def read_validations(path: Path) -> list[dict]:
    from trilora.training.metrics import read_metrics

    return [{"step": int(row["step"]), "val_loss": row["val_loss"], "val_loss_se": row["val_loss_se"]}
            for row in read_metrics(path) if row["val_loss"] is not None]  # fmt: skip


def evaluate_runs(output: Path, base: Path, runs: list[dict], configs: dict, prompts: int) -> dict:
    """Score the base model, then every checkpoint of every run (adds run["checkpoints"]); returns
    the base model's scores. The base is loaded once; each (method, rank) gets one copy of its UNet
    with adapters shaped by `configs[method, rank]`, into which each checkpoint's factors are loaded."""
    from trilora.adapters.inject import add_run_adapters, load_adapter_state_dict
    from trilora.base.load import load_pipeline
    from trilora.toy.judge import load_judge
    from trilora.toy.metrics import nfid
    from trilora.training.checkpoint import list_checkpoints, load_checkpoint

    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge()
    wanted = prompt_set(prompts, (ADAPTER_STYLE,), seed=PROMPT_SEED)
    reference = reference_renders(wanted, seed=IMAGE_SEED)
    training = [Image.open(p).convert("RGB") for p in sorted((output / "data" / "train").glob("*.png"))]

    def measure(what: str) -> dict[str, float]:
        started = time.perf_counter()
        images = generate_images(pipe, wanted, seed=IMAGE_SEED)
        scores = score(judge, images, wanted, reference=reference, training=training)
        log.info("bench: %s: style %.2f, fidelity %.2f, toy FID %.1f (%.0f s)",
                 what, scores["style"], scores["fidelity"], scores["fid"], time.perf_counter() - started)  # fmt: skip
        return scores

    base_scores = measure("base model")
    base_scores["nfid"] = nfid(base_scores["fid"], base_scores["fid"])
    base_unet = pipe.unet
    for (method, rank), config in configs.items():
        pipe.unet = copy.deepcopy(base_unet)
        add_run_adapters(pipe.unet, None, config.adapter)
        for run in [r for r in runs if (r["method"], r["rank"]) == (method, rank)]:
            started = time.perf_counter()
            # Every adapter starts as the identity (LoRA's up and TriLoRA's down are zero): step 0 is the base.
            run["checkpoints"] = [{"step": 0} | base_scores]
            for path in list_checkpoints(output / run["folder"]):
                state = load_checkpoint(path)
                unet_state = {k.removeprefix("unet."): v for k, v in state["adapter"].items()}
                load_adapter_state_dict(pipe.unet, unet_state)
                scores = measure(f"{method} rank {rank} seed {run['seed']} step {state['step']}")
                scores["nfid"] = nfid(scores["fid"], base_scores["fid"])
                run["checkpoints"].append({"step": state["step"]} | scores)
            run["evaluate_seconds"] = time.perf_counter() - started
    pipe.unet = base_unet
    return base_scores


def command_line(output: Path, settings: dict) -> str:
    """The command that reproduces a bench, every setting spelled out."""
    words = ["trilora", "bench", "toy", "--methods", ",".join(settings["methods"]),
             "--ranks", ",".join(map(str, settings["ranks"])), "--seeds", str(settings["seeds"]),
             "--steps", str(settings["steps"]), "--eval-every", str(settings["eval_every"]),
             "--prompts", str(settings["prompts"]), "--lr", f"{settings['lr']:g}",
             "--patience", str(settings["patience"]), "--output", str(output), "--base", settings["base"]]  # fmt: skip
    return shlex.join(words)
