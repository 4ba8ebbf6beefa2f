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
import json
import logging
import shlex
import time
from itertools import product
from pathlib import Path

from PIL import Image

from trilora.adapters.inject import add_run_adapters, load_adapter_state_dict, set_multiplier
from trilora.config import SETTINGS_FILE, BenchConfig, RunConfig, Tree, from_dict, settings_toml
from trilora.errors import UserError
from trilora.evaluation.kid import mmd2_unbiased
from trilora.files import write_text
from trilora.run_folder import claim
from trilora.toy.evaluate import (
    ADAPTER_COLOURS,
    ADAPTER_STYLE,
    GUIDANCE,
    SIGNAL_SEED,
    STEPS,
    adapter_dataset,
    generate_images,
    prompt_set,
    reference_renders,
    score,
)
from trilora.toy.judge import load_judge
from trilora.toy.metrics import nfid
from trilora.toy.report import analyse_run, summarise, write_report
from trilora.toy.stopping import WIDE_FACTOR, WIDE_STEPS, compare_rules, rules_summary
from trilora.toy.truth import prompt_hits, run_truth
from trilora.toy.world import parse_caption
from trilora.training.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint
from trilora.training.export import finished_summary
from trilora.training.loop import train
from trilora.training.metrics import read_metrics

log = logging.getLogger("trilora")

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
    deleted first only with settings.overwrite, or continued with settings.resume."""
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.toy.base import toy_base

    settings.methods, settings.ranks = (
        list(dict.fromkeys(settings.methods)),
        list(dict.fromkeys(settings.ranks)),
    )
    settings.validate()
    base = toy_base(settings.base)
    output = Path(settings.output)
    saved = settings_toml(Tree(bench=settings), "bench")
    if settings.resume:
        earlier = output / SETTINGS_FILE
        if not earlier.is_file():
            raise UserError(f"no bench to resume in {output} (no {SETTINGS_FILE}); start it without --resume")
        if body(earlier.read_text()) != body(saved):
            raise UserError(f"the bench in {output} has other settings (see its {SETTINGS_FILE}); resume it with "
                            f"--config {earlier} --resume, or choose another --output")  # fmt: skip
    lock = claim(output, bench_files, "bench toy", settings.overwrite, settings.resume,
                 "its report is report.md; continue it with --resume", what="a benchmark")  # fmt: skip
    try:
        write_text(output / SETTINGS_FILE, saved)
        return bench_locked(output, settings, base)
    finally:
        lock.release()


def body(toml: str) -> str:
    """A settings.toml without its comment header (which names the version)."""
    return "\n".join(line for line in toml.splitlines() if not line.startswith("#"))


BENCH_FILES = ("report.md", "results.json", "plots", "runs", "data", SETTINGS_FILE)


def bench_files(folder: Path) -> list[Path]:
    return [folder / name for name in BENCH_FILES if (folder / name).exists()]


def train_colours(settings: BenchConfig) -> tuple[str, ...]:
    return ADAPTER_COLOURS[: settings.train_colours]


def bench_locked(output: Path, settings: BenchConfig, base: Path) -> dict:
    started = time.perf_counter()
    s = settings
    adapter_dataset(output / "data" / "train", s.train_images, TRAIN_SEED, train_colours(s))
    adapter_dataset(output / "data" / "val", VAL_IMAGES, VAL_SEED, train_colours(s))
    runs, configs = [], {}
    for method, rank, seed in product(s.methods, s.ranks, range(s.seeds)):
        folder = output / "runs" / f"{method}-r{rank}-s{seed}"
        config = configs[method, rank] = bench_config(output, folder, base, method, rank, seed, s.steps,
                                                      s.eval_every, s.lr)  # fmt: skip
        runs.append(train_run(config, folder, output, method, rank, seed))
    trained = time.perf_counter()
    scorer = Scorer(output, base, s)
    base_scores = scorer.base_scores
    # the tuning runs first: the rules can be chosen on them while the held-out ones are scored
    for run in sorted(runs, key=lambda r: bool(s.tune_seeds) and r["seed"] >= s.tune_seeds):
        scorer.score_run(run, configs[run["method"], run["rank"]])
    runs = [analyse_run(run, s.patience) for run in runs]
    recorded = dict(
        methods=s.methods, ranks=s.ranks, seeds=s.seeds, steps=s.steps, eval_every=s.eval_every, prompts=s.prompts,
        base=str(base), lr=s.lr, patience=s.patience, batch_size=BATCH_SIZE, train_images=s.train_images,
        val_images=VAL_IMAGES, val_timesteps=VAL_TIMESTEPS, style=ADAPTER_STYLE, train_colours=list(train_colours(s)),
        signal_prompts=s.signal_prompts, strengths=s.strengths, prompt_seed=PROMPT_SEED, signal_seed=SIGNAL_SEED,
        image_seed=IMAGE_SEED, sample_steps=STEPS, guidance=GUIDANCE, truth_prompts=scorer.truth_count,
        tune_seeds=s.tune_seeds, wide_steps=WIDE_STEPS,
    )  # fmt: skip
    for run in runs:
        hits = [c.pop("truth") for c in run["checkpoints"]]
        run["truth"] = run_truth(hits, [c["step"] for c in run["checkpoints"]])
        run["rules"] = compare_rules(run, recorded)
        del run["truth"]["draws"]  # 1000 per checkpoint: measured, not kept
    if s.strengths:
        for (method, rank), config in configs.items():
            for run in [r for r in runs if (r["method"], r["rank"]) == (method, rank)]:
                scorer.strength_curves(run, config, s.strengths)
    evaluated = time.perf_counter()
    results = {
        "command": command_line(output, recorded),
        "settings": recorded,
        "base": {k: v for k, v in base_scores.items() if k != "truth"},  # its truth is each run's step 0
        "runs": runs,
        "summary": summarise(runs),
        "rules": rules_summary(runs, s.tune_seeds),
        "seconds": {"train": trained - started, "evaluate": evaluated - trained},
    }
    results["seconds"]["total"] = time.perf_counter() - started
    write_report(output, results)
    return results


def train_run(config: RunConfig, folder: Path, output: Path, method: str, rank: int, seed: int) -> dict:
    """Train one run, or continue it: a finished run (summary.json) is kept, an interrupted one
    resumes from its last checkpoint. Its record: settings, training time, validations."""

    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.scorers import stopping_scorer

    record_file = folder / "bench-run.json"
    if finished_summary(folder) and record_file.is_file():
        log.info("bench: %s rank %d seed %d is trained already", method, rank, seed)
        seconds = json.loads(record_file.read_text())["train_seconds"]
    else:
        run_started = time.perf_counter()
        if list_checkpoints(folder):
            log.info("bench: resuming %s rank %d seed %d", method, rank, seed)
            config.checkpoint.resume = str(folder)
        else:
            log.info("bench: training %s rank %d seed %d", method, rank, seed)
        train(config, find_scorer=stopping_scorer)
        seconds = time.perf_counter() - run_started
        write_text(record_file, json.dumps({"train_seconds": seconds}))
    return {"method": method, "rank": rank, "seed": seed, "folder": str(folder.relative_to(output)),
            "train_seconds": seconds, "validations": read_validations(folder / "metrics.csv")}  # fmt: skip


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
            # stopping is replayed afterwards, the generation signal included (Scorer): none while training
            "validation": {
                "validate_every": eval_every,
                "patience": 0,
                "val_timesteps": VAL_TIMESTEPS,
                "stop_on": "val_loss",
            },
            "checkpoint": {"checkpoint_every": eval_every, "keep_checkpoints": steps // eval_every},
            "export": {"name": f"{method}-r{rank}-s{seed}"},
        },
        source="bench",
    )


def read_validations(path: Path) -> list[dict]:
    return [{"step": int(row["step"]), "val_loss": row["val_loss"], "val_loss_se": row["val_loss_se"],
             "val_loss_by_t": row["val_loss_by_t"]}
            for row in read_metrics(path) if row["val_loss"] is not None]  # fmt: skip


class Scorer:
    """Generates and judges: the base model once, then every checkpoint of every run, each scored
    on the test prompts (and the held-out signal prompts); scores are kept beside each checkpoint
    (scores.json) so that a resumed bench does not score again. Each (method, rank) gets one copy
    of the base UNet with adapters shaped by its config, into which each checkpoint is loaded."""

    def __init__(self, output: Path, base: Path, settings: BenchConfig):
        # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
        from trilora.base.load import load_pipeline

        self.pipe = load_pipeline(base)
        self.pipe.set_progress_bar_config(disable=True)
        self.judge, self.settings, self.base_unet = load_judge(), settings, self.pipe.unet
        # the truth prompts extend the test prompts (the same seed draws the same first ones)
        self.truth_count = max(settings.prompts, settings.truth_prompts)
        self.truth = prompt_set(self.truth_count, (ADAPTER_STYLE,), seed=PROMPT_SEED)
        self.wanted = self.truth[: settings.prompts]
        self.signal = prompt_set(settings.signal_prompts, (ADAPTER_STYLE,), seed=SIGNAL_SEED)
        self.wide = prompt_set(WIDE_FACTOR * settings.signal_prompts, (ADAPTER_STYLE,), seed=SIGNAL_SEED)
        val = sorted((output / "data" / "val").glob("*.png"))
        self.val_wanted = [
            parse_caption(p.with_suffix(".txt").read_text()) for p in val
        ] * 2  # two images each
        self.val_features = (
            None if not val else self.judge.features([Image.open(p).convert("RGB") for p in val])
        )
        self.reference = reference_renders(self.wanted, seed=IMAGE_SEED)
        self.training = [
            Image.open(p).convert("RGB") for p in sorted((output / "data" / "train").glob("*.png"))
        ]
        self.output, self.shaped = output, None
        self.key = {"prompts": settings.prompts, "signal_prompts": settings.signal_prompts,
                    "train_colours": settings.train_colours, "train_images": settings.train_images,
                    "truth_prompts": self.truth_count, "signals": 2}  # fmt: skip
        self.base_scores = self.measure("base model", signal=True)
        self.base_scores["nfid"] = nfid(self.base_scores["fid"], self.base_scores["fid"])

    def measure(self, what: str, signal: bool = False) -> dict:
        """The test prompts' scores; with `signal` (a checkpoint), also the truth prompts' hits and every
        stopping signal's measurement."""
        started = time.perf_counter()
        seen = train_colours(self.settings)
        images = generate_images(self.pipe, self.truth if signal else self.wanted, seed=IMAGE_SEED)
        test = images[: len(self.wanted)]
        scores = score(self.judge, test, self.wanted, reference=self.reference, training=self.training,
                       seen_colours=seen)  # fmt: skip
        if signal:
            scores["truth"] = prompt_hits(self.judge.predict(images), self.truth)
        if signal and self.signal:
            held_out = generate_images(self.pipe, self.signal, seed=IMAGE_SEED + 10_000)
            scores["signal"] = score(self.judge, held_out, self.signal, seen_colours=seen)
            wide = generate_images(self.pipe, self.wide, seed=IMAGE_SEED + 20_000, steps=WIDE_STEPS)
            scores["wide"] = score(self.judge, wide, self.wide, seen_colours=seen)
            if self.val_features is not None:
                generated = generate_images(self.pipe, self.val_wanted, seed=IMAGE_SEED + 30_000)
                scores["kid"] = mmd2_unbiased(self.judge.features(generated), self.val_features)
        log.info("bench: %s: style %.2f, fidelity %.2f, toy FID %.1f (%.0f s)",
                 what, scores["style"], scores["fidelity"], scores["fid"], time.perf_counter() - started)  # fmt: skip
        return scores

    def shape(self, config: RunConfig) -> None:
        if self.shaped != (config.adapter.method, config.adapter.rank):
            self.pipe.unet = copy.deepcopy(self.base_unet)
            add_run_adapters(self.pipe.unet, None, config.adapter)
            self.shaped = (config.adapter.method, config.adapter.rank)

    def load(self, path: Path) -> int:
        state = load_checkpoint(path)
        load_adapter_state_dict(
            self.pipe.unet, {k.removeprefix("unet."): v for k, v in state["adapter"].items()}
        )
        return state["step"]

    def score_run(self, run: dict, config: RunConfig) -> None:
        """Adds run["checkpoints"]: step 0 (every adapter starts as the identity: the base model), then each."""

        started = time.perf_counter()
        run["checkpoints"] = [{"step": 0} | self.base_scores]
        self.shape(config)
        for path in list_checkpoints(self.output / run["folder"]):
            cached = path / "scores.json"
            found = json.loads(cached.read_text()) if cached.is_file() else None
            if found is not None and found.get("key") == self.key:
                scores, step = found["scores"], found["step"]
            else:
                step = self.load(path)
                scores = self.measure(
                    f"{run['method']} rank {run['rank']} seed {run['seed']} step {step}", signal=True
                )
                scores["nfid"] = nfid(scores["fid"], self.base_scores["fid"])
                write_text(cached, json.dumps({"key": self.key, "step": step, "scores": scores}))
            run["checkpoints"].append({"step": step} | scores)
        run["evaluate_seconds"] = time.perf_counter() - started

    def strength_curves(self, run: dict, config: RunConfig, strengths: list[float]) -> None:
        """Adds run["strengths"]: style hit and fidelity of its best and last adapters at each strength
        (kept beside the checkpoint in strengths.json, so that a resumed bench does not measure again)."""

        self.shape(config)
        run["strengths"] = {}
        for which in ("best", "last"):
            step = run[which]["step"]
            if step == 0:
                continue
            path = checkpoint_dir(self.output / run["folder"], step)
            cached = path / "strengths.json"
            key = self.key | {"strengths": list(strengths)}
            found = json.loads(cached.read_text()) if cached.is_file() else None
            if found is not None and found.get("key") == key:
                run["strengths"][which] = found["curve"]
                continue
            self.load(path)
            curve = []
            for strength in strengths:
                set_multiplier(self.pipe.unet, strength)
                scores = self.measure(f"{run['folder']} {which} at strength {strength:g}")
                curve.append(
                    {"strength": strength}
                    | {k: scores[k] for k in ("style", "fidelity", "fidelity_unseen", "fid")}
                )
            set_multiplier(self.pipe.unet, 1.0)
            write_text(cached, json.dumps({"key": key, "curve": curve}))
            run["strengths"][which] = curve


def command_line(output: Path, settings: dict) -> str:
    """The command that reproduces a bench, every setting spelled out."""
    words = ["trilora", "bench", "toy", "--methods", ",".join(settings["methods"]),
             "--ranks", ",".join(map(str, settings["ranks"])), "--seeds", str(settings["seeds"]),
             "--steps", str(settings["steps"]), "--eval-every", str(settings["eval_every"]),
             "--prompts", str(settings["prompts"]), "--lr", f"{settings['lr']:g}",
             "--patience", str(settings["patience"]), "--output", str(output), "--base", settings["base"]]  # fmt: skip
    return shlex.join(words)
