"""`trilora evaluate`: generate with the base model and each adapter at each strength, then score.

Scores per row (the base model, then every adapter at every strength > 0):
- FID against the reference images and NFID = FID / FID(base model), the TriLoRA paper's measure;
- KID (unbiased, so it suits small sets) with its standard deviation over subsets;
- CLIP score (100 x cosine of image and prompt embeddings, floored at 0, averaged).
Outputs: metrics.json, metrics.csv and report.html in the output folder; generated images stay in
the cache (OUTPUT/cache unless --cache says otherwise) for the next run.
"""

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trilora.base.detect import detect_family
from trilora.config import SETTINGS_FILE, EvaluateConfig, ModelConfig, SamplingConfig, Tree, settings_toml
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.evaluation.cache import ImageCache, file_identity, settings_key
from trilora.evaluation.generation import Variant, all_keys, generate_missing, images_per_prompt
from trilora.evaluation.inception import inception_features, load_inception
from trilora.evaluation.inputs import load_image, read_prompts, reference_files
from trilora.evaluation.kid import kernel_inception_distance, subset_size_for
from trilora.evaluation.metrics import fid, nfid, recommend_strength
from trilora.evaluation.report import write_outputs
from trilora.files import write_text
from trilora.inference.generate import check_adapter_family, scheduler_from
from trilora.run_folder import check_folder_path, claim

log = logging.getLogger("trilora")
BASE_LABEL = "base model"


@dataclass
class Evaluation:
    """One evaluation: the tree's settings (model, sampling, evaluate) and what they resolve to."""

    model: ModelConfig
    sampling: SamplingConfig
    settings: EvaluateConfig
    prompts: list[str]
    reference: Path
    loras: list[Path]
    labels: list[str]
    training: dict | None = None  # `trilora compare`: each method's training summary, for the report
    settings_text: str = ""  # settings.toml, written beside the report

    def __post_init__(self):
        self.settings.strengths = sorted(set(self.settings.strengths))  # strength 0 is the base model

    @property
    def output(self) -> Path:
        return Path(self.settings.output)

    @property
    def cache(self) -> Path:
        return Path(self.settings.cache) if self.settings.cache else self.output / "cache"


def adapter_labels(loras: list[Path], labels: list[str] | None) -> list[str]:
    """Names for the report: the given ones, else the file names (stems, or full names where stems repeat)."""
    if labels is not None:
        if len(labels) != len(loras) or len(set(labels)) != len(labels):
            raise UserError(
                f"give one distinct name per adapter; got {len(labels)} names for {len(loras)} adapters"
            )
        return labels
    stems = [p.stem for p in loras]
    names = stems if len(set(stems)) == len(stems) else [str(p) for p in loras]
    return names if len(set(names)) == len(names) else [f"{n} ({i})" for i, n in enumerate(names)]


def check_settings(job: Evaluation) -> None:
    if not Path(job.model.base).exists():
        raise UserError(
            f"base model not found: {job.model.base}" if job.model.base else "no base model: pass --base PATH"
        )
    for path in job.loras:
        if not Path(path).exists():
            raise UserError(f"adapter file not found: {path}")
    job.sampling.validate()
    reference_files(job.reference)  # before any generation or training (compare trains first)
    if len(job.prompts) * job.sampling.num_images < 2:
        raise UserError("FID and KID need at least 2 images per row: give more prompts or --num-images")
    resolve_device(job.settings.device)  # a bad --device stops here, before the output folder is touched
    check_folder_path(job.output)


REPORT_FILES = ("metrics.json", "metrics.csv", "report.html", SETTINGS_FILE)


def report_files(folder: Path) -> list[Path]:
    """An earlier evaluation's results in `folder` (its cache/ is not one: it is reused by design)."""
    return [folder / name for name in REPORT_FILES if (folder / name).exists()]


def claim_output(output: Path, overwrite: bool, command: str):
    """Lock the report folder; an earlier report is replaced only with --overwrite, and only once the
    new one is written (atomically), so a failed run leaves the old report as it was."""

    hint = f"to reuse its generated images elsewhere, give --cache {output / 'cache'} with another --output"
    return claim(output, report_files, command, overwrite, False, hint, delete_earlier=False, what="a report")


def evaluate(job: Evaluation, lock_held: bool = False) -> dict:
    """Generate what the cache lacks, score every row, write metrics.json/.csv, report.html and
    settings.toml; the results.

    The output folder is locked for the whole run (`lock_held`: the caller, `trilora compare`, holds it).
    """
    # here, not at the top: transformers (~1 s), which importing this module does not need
    from trilora.evaluation.clip_score import load_clip_scorer

    check_settings(job)
    device = resolve_device(job.settings.device)
    # The metric networks and references load first, so that a missing file stops the run before
    # the output folder is touched and hours of generation are spent.
    inception = load_inception(optional_path(job.settings.inception_weights)).to(device)
    clip = load_clip_scorer(optional_path(job.settings.clip_model), device)
    references = reference_files(job.reference)
    lock = None if lock_held else claim_output(job.output, job.settings.overwrite, "evaluate")
    try:
        return evaluate_locked(job, device, inception, clip, references)
    finally:
        if lock is not None:
            lock.release()


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


@dataclass
class Plan:
    """The rows of an evaluation and the cache keys of each row's images."""

    base: Variant
    adapters: dict[str, list[Variant]]  # label -> its variants, one per strength > 0
    prompts: list[str]  # distinct, in order
    keys: dict[Variant, list[list[str]]]

    @property
    def variants(self) -> list[Variant]:
        return [self.base] + [v for group in self.adapters.values() for v in group]


def plan(job: Evaluation, device: torch.device, dtype: torch.dtype) -> Plan:
    base = Variant(BASE_LABEL)
    adapters = {
        label: [Variant(label, Path(path), strength) for strength in job.settings.strengths if strength > 0]
        for label, path in zip(job.labels, job.loras, strict=True)
    }
    prompt_images = images_per_prompt(job.prompts, job.sampling.num_images)
    rows = Plan(base, adapters, list(prompt_images), {})
    base_config = optional_path(job.model.base_config)
    model = job.model
    options = [f"prediction_type={model.prediction_type}"] * bool(model.prediction_type) + [
        "zero_terminal_snr"] * model.zero_terminal_snr  # fmt: skip
    rows.keys = all_keys(rows.variants, prompt_images, job.sampling, Path(model.base), base_config, device, dtype,
                         options)  # fmt: skip
    return rows


def evaluate_locked(job: Evaluation, device, inception, clip, references: list[Path]) -> dict:
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.base.load import load_model

    family, _ = detect_family(Path(job.model.base), job.model.base_config, job.model.family)
    for path in job.loras:
        check_adapter_family(Path(path), family)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows_of = plan(job, device, dtype)
    cache = ImageCache(job.cache)

    def load_pipe():
        pipe = load_model(job.model, dtype=dtype).pipe
        if job.sampling.scheduler:
            pipe.scheduler = scheduler_from(job.sampling.scheduler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    generated = generate_missing(
        load_pipe,
        rows_of.variants,
        rows_of.keys,
        rows_of.prompts,
        job.sampling,
        cache,
        job.settings.batch_size,
    )
    rows = score_rows(job, rows_of, cache, device, inception, clip, references)
    results = summarise(job, rows, rows_of, references, device, dtype) | {"generated": generated}
    grids = {
        label: {
            "columns": [BASE_LABEL] + [f"{v.strength:g}" for v in group],
            "rows": [
                (prompt, [cache.get(rows_of.keys[v][p][0]) for v in [rows_of.base, *group]])
                for p, prompt in enumerate(rows_of.prompts[: job.settings.grid_prompts])
            ],
        }
        for label, group in (rows_of.adapters or {BASE_LABEL: []}).items()
    }
    write_outputs(job.output, results, grids)
    write_text(job.output / SETTINGS_FILE, job.settings_text)
    return results


def score_rows(job: Evaluation, rows_of: Plan, cache: ImageCache, device, inception, clip,
               references: list[Path]) -> list[dict]:  # fmt: skip
    """One row of scores per variant (the metrics of each are cached too), NFID against the first."""

    s = job.settings
    metric_settings = dict(
        reference=[file_identity(p) for p in references],
        inception=file_identity(optional_path(s.inception_weights)),
        clip=file_identity(optional_path(s.clip_model)),
        kid=[s.kid_subsets, s.kid_subset_size],
        device=device.type,
    )
    metric_batch = s.batch_size * 8
    reference_features = None
    rows = []
    for variant in rows_of.variants:
        image_keys = [key for row in rows_of.keys[variant] for key in row]
        row_key = settings_key(images=image_keys, **metric_settings)
        metrics = cache.get_metrics(row_key)
        if metrics is None:
            if reference_features is None:
                log.info("evaluate: Inception features of %d reference images", len(references))
                reference_features = inception_features(
                    inception, [load_image(p) for p in references], metric_batch
                )
            images = [cache.get(key) for key in image_keys]
            image_prompts = [
                p for p, row in zip(rows_of.prompts, rows_of.keys[variant], strict=True) for _ in row
            ]
            metrics = row_metrics(images, image_prompts, reference_features, inception, clip, s, metric_batch)
            cache.put_metrics(row_key, metrics)
        rows.append({"label": variant.label, "adapter": None if variant.adapter is None else str(variant.adapter),
                     "strength": variant.strength, **metrics})  # fmt: skip
        log.info("evaluate: %s at %g: FID %.2f, KID %.4f, CLIP score %.2f", variant.label, variant.strength,
                 metrics["fid"], metrics["kid"], metrics["clip_score"])  # fmt: skip
    base_fid = rows[0]["fid"]
    for row in rows:
        row["nfid"] = nfid(row["fid"], base_fid) if base_fid > 0 else None
    return rows


def summarise(job: Evaluation, rows: list[dict], rows_of: Plan, references, device, dtype) -> dict:
    """metrics.json: the rows, the strength recommended for each adapter, and how they were made."""
    s = job.settings
    recommended = {}
    for label in job.labels:
        points = [(r["strength"], r["fid"], r["clip_score"]) for r in rows if r["label"] == label]
        if 0 in s.strengths:
            points.insert(0, (0.0, rows[0]["fid"], rows[0]["clip_score"]))
        if points:
            recommended[label] = recommend_strength(points, s.clip_tolerance)
    return {
        "base": str(job.model.base),
        "reference": {"folder": str(job.reference), "images": len(references)},
        "prompts": len(job.prompts),
        "distinct_prompts": len(rows_of.prompts),
        "strengths": s.strengths,
        "protocol": asdict(job.sampling),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "metrics": {
            "inception_weights": str(optional_path(s.inception_weights)),
            "clip_model": str(optional_path(s.clip_model)),
            "kid_subsets": s.kid_subsets,
            "kid_subset_size": subset_size_for(len(references), rows[0]["images"], s.kid_subset_size),
            "clip_tolerance": s.clip_tolerance,
        },
        "rows": rows,
        "recommended": recommended,
        "training": job.training,
    }


def row_metrics(
    images, prompts, reference_features, inception, clip, s: EvaluateConfig, batch_size: int
) -> dict:
    """FID, KID (mean, sd over subsets) and CLIP score (mean, sd over images) of one row's images."""

    features = inception_features(inception, images, batch_size)
    kid, kid_std = kernel_inception_distance(
        features, reference_features, s.kid_subsets, s.kid_subset_size, seed=0
    )
    clip_scores = clip.scores(images, prompts, batch_size)
    return {
        "images": len(images),
        "fid": fid(features, reference_features),
        "kid": kid,
        "kid_std": kid_std,
        "clip_score": float(clip_scores.mean()),
        "clip_score_std": float(clip_scores.std(correction=0)),
    }


def evaluate_command(tree: Tree) -> dict:
    """`trilora evaluate`: the base model and each --lora at each of --strengths, in one report."""
    settings = tree.evaluate
    settings.validate()
    if not settings.prompts or not settings.reference:
        raise UserError(
            "give the prompts and the real images to compare with: --prompts FILE|DIR --reference DIR"
        )
    if not settings.lora:
        log.info("evaluate: no --lora given; scoring the base model alone")
    loras = [Path(p) for p in settings.lora]
    job = Evaluation(tree.model, tree.sampling, settings, read_prompts(settings.prompts), Path(settings.reference),
                     loras, adapter_labels(loras, settings.name or None), settings_text=settings_toml(tree, "evaluate"))  # fmt: skip
    results = evaluate(job)
    print_summary(results, job.output)
    return results


def print_summary(results: dict, output: Path) -> None:
    print(f"{'':24} {'strength':>8} {'FID':>9} {'NFID':>7} {'KID':>16} {'CLIP':>6}")
    for row in results["rows"]:
        nfid_text = f"{row['nfid']:.3f}" if row["nfid"] is not None else "-"
        print(f"{row['label'][:24]:24} {row['strength']:8g} {row['fid']:9.2f} {nfid_text:>7} "
              f"{row['kid']:8.4f}±{row['kid_std']:.4f} {row['clip_score']:6.2f}")  # fmt: skip
    for label, strength in results["recommended"].items():
        print(f"recommended strength for {label}: {strength:g}")
    print(f"report: {output / 'report.html'} (metrics.json, metrics.csv beside it)")
