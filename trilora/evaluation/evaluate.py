"""`trilora evaluate`: generate with the base model and each adapter at each strength, then score.

Scores per row (the base model, then every adapter at every strength > 0):
- FID against the reference images and NFID = FID / FID(base model), the TriLoRA paper's measure;
- KID (unbiased, so it suits small sets) with its standard deviation over subsets;
- CLIP score (100 x cosine of image and prompt embeddings, floored at 0, averaged).
Outputs: metrics.json, metrics.csv and report.html in the output folder; generated images stay in
the cache (OUTPUT/cache unless --cache says otherwise) for the next run.
"""

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.evaluation.cache import ImageCache, file_identity, settings_key
from trilora.evaluation.generation import Protocol, Variant, all_keys, generate_missing, images_per_prompt
from trilora.evaluation.inputs import load_image, parse_strengths, read_prompts, reference_files
from trilora.evaluation.kid import subset_size_for
from trilora.evaluation.metrics import fid, nfid, recommend_strength
from trilora.inference.generate import check_size
from trilora.run_folder import check_folder_path

log = logging.getLogger("trilora")
BASE_LABEL = "base model"


@dataclass
class EvalSettings:
    base: Path
    loras: list[Path]
    prompts: list[str]
    reference: Path
    output: Path
    inception_weights: Path | None
    clip_model: Path | None
    strengths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    protocol: Protocol = field(default_factory=Protocol)
    base_config: Path | None = None
    labels: list[str] | None = None  # adapter names in the report (default: file names)
    batch_size: int = 4  # images per pipeline call, and per metric-network batch x 8
    device: str = "auto"
    cache: Path | None = None  # default OUTPUT/cache
    kid_subsets: int = 100
    kid_subset_size: int | None = None  # None: min(1000, half the smaller set)
    clip_tolerance: float = 1.0  # CLIP-score points below the best that a recommended strength may lose
    grid_prompts: int = 8  # prompts shown in the report's image grids
    training: dict | None = None  # `trilora compare`: each method's training summary, for the report
    overwrite: bool = False  # replace an earlier report in `output` (its image cache is kept either way)


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


def check_settings(s: EvalSettings) -> None:
    if not Path(s.base).exists():
        raise UserError(f"base model not found: {s.base}")
    for path in s.loras:
        if not Path(path).exists():
            raise UserError(f"adapter file not found: {path}")
    p = s.protocol
    if p.num_images < 1 or p.steps < 1 or s.batch_size < 1:
        raise UserError("--num-images, --steps and --batch-size must be at least 1")
    if len(s.prompts) * p.num_images < 2:
        raise UserError("FID and KID need at least 2 images per row: give more prompts or --num-images")
    if s.kid_subsets < 1 or (s.kid_subset_size is not None and s.kid_subset_size < 2):
        raise UserError("--kid-subsets must be at least 1 and --kid-subset-size at least 2")
    if s.clip_tolerance < 0:
        raise UserError("--clip-tolerance must be 0 or more")
    if any(strength < 0 for strength in s.strengths):
        raise UserError("--strengths must be 0 or more (0 is the base model)")
    check_size("--height", p.height)
    check_size("--width", p.width)
    resolve_device(s.device)  # a bad --device stops here, before the output folder is touched
    check_folder_path(Path(s.output))


REPORT_FILES = ("metrics.json", "metrics.csv", "report.html")


def report_files(folder: Path) -> list[Path]:
    """An earlier evaluation's results in `folder` (its cache/ is not one: it is reused by design)."""
    return [folder / name for name in REPORT_FILES if (folder / name).exists()]


def claim_output(output: Path, overwrite: bool, command: str):
    """Lock the report folder; an earlier report is replaced only with --overwrite, and only once the
    new one is written (atomically), so a failed run leaves the old report as it was."""
    from trilora.run_folder import claim

    hint = f"to reuse its generated images elsewhere, give --cache {output / 'cache'} with another --output"
    return claim(output, report_files, command, overwrite, False, hint, delete_earlier=False, what="a report")


def evaluate(s: EvalSettings, lock_held: bool = False) -> dict:
    """Generate what the cache lacks, score every row, write metrics.json/.csv and report.html; the results.

    The output folder is locked for the whole run (`lock_held`: the caller, `trilora compare`, holds it).
    """
    from trilora.evaluation.clip_score import load_clip_scorer
    from trilora.evaluation.inception import load_inception

    check_settings(s)
    device = resolve_device(s.device)
    # The metric networks and references load first, so that a missing file stops the run before
    # the output folder is touched and hours of generation are spent.
    inception = load_inception(s.inception_weights).to(device)
    clip = load_clip_scorer(s.clip_model, device)
    references = reference_files(s.reference)
    lock = None if lock_held else claim_output(Path(s.output), s.overwrite, "evaluate")
    try:
        return evaluate_locked(s, device, inception, clip, references)
    finally:
        if lock is not None:
            lock.release()


def evaluate_locked(s: EvalSettings, device, inception, clip, references: list[Path]) -> dict:
    from trilora.base.load import load_pipeline
    from trilora.evaluation.inception import inception_features
    from trilora.evaluation.report import write_outputs

    dtype = torch.float16 if device.type == "cuda" else torch.float32

    labels = adapter_labels([Path(p) for p in s.loras], s.labels)
    base_variant = Variant(BASE_LABEL)
    adapter_variants = {
        label: [Variant(label, Path(path), strength) for strength in s.strengths if strength > 0]
        for label, path in zip(labels, s.loras, strict=True)
    }
    variants = [base_variant] + [v for group in adapter_variants.values() for v in group]
    prompt_images = images_per_prompt(s.prompts, s.protocol.num_images)
    prompts = list(prompt_images)  # distinct, in order
    keys = all_keys(variants, prompt_images, s.protocol, Path(s.base), s.base_config, device, dtype)
    cache = ImageCache(s.cache or Path(s.output) / "cache")

    def load_pipe():
        from trilora.inference.generate import scheduler_from

        pipe = load_pipeline(s.base, s.base_config, dtype=dtype)
        if s.protocol.scheduler:
            pipe.scheduler = scheduler_from(s.protocol.scheduler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    generated = generate_missing(load_pipe, variants, keys, prompts, s.protocol, cache, s.batch_size)

    metric_settings = dict(
        reference=[file_identity(p) for p in references],
        inception=file_identity(s.inception_weights),
        clip=file_identity(s.clip_model),
        kid=[s.kid_subsets, s.kid_subset_size],
        device=device.type,
    )
    metric_batch = s.batch_size * 8
    reference_features = None
    rows = []
    for variant in variants:
        image_keys = [key for row in keys[variant] for key in row]
        row_key = settings_key(images=image_keys, **metric_settings)
        metrics = cache.get_metrics(row_key)
        if metrics is None:
            if reference_features is None:
                log.info("evaluate: Inception features of %d reference images", len(references))
                reference_features = inception_features(
                    inception, [load_image(p) for p in references], metric_batch
                )
            images = [cache.get(key) for key in image_keys]
            image_prompts = [prompt for prompt, row in zip(prompts, keys[variant], strict=True) for _ in row]
            metrics = row_metrics(images, image_prompts, reference_features, inception, clip, s, metric_batch)
            cache.put_metrics(row_key, metrics)
        rows.append({"label": variant.label, "adapter": None if variant.adapter is None else str(variant.adapter),
                     "strength": variant.strength, **metrics})  # fmt: skip
        log.info("evaluate: %s at %g: FID %.2f, KID %.4f, CLIP score %.2f", variant.label, variant.strength,
                 metrics["fid"], metrics["kid"], metrics["clip_score"])  # fmt: skip
    base_fid = rows[0]["fid"]
    for row in rows:
        row["nfid"] = nfid(row["fid"], base_fid) if base_fid > 0 else None

    recommended = {}
    for label in labels:
        points = [(r["strength"], r["fid"], r["clip_score"]) for r in rows if r["label"] == label]
        if 0 in s.strengths:
            points.insert(0, (0.0, rows[0]["fid"], rows[0]["clip_score"]))
        if points:
            recommended[label] = recommend_strength(points, s.clip_tolerance)

    results = {
        "base": str(s.base),
        "reference": {"folder": str(s.reference), "images": len(references)},
        "prompts": len(s.prompts),
        "distinct_prompts": len(prompts),
        "strengths": s.strengths,
        "protocol": asdict(s.protocol),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "metrics": {
            "inception_weights": str(s.inception_weights),
            "clip_model": str(s.clip_model),
            "kid_subsets": s.kid_subsets,
            "kid_subset_size": subset_size_for(len(references), rows[0]["images"], s.kid_subset_size),
            "clip_tolerance": s.clip_tolerance,
        },
        "rows": rows,
        "recommended": recommended,
        "training": s.training,
        "generated": generated,
    }
    grids = {
        label: {
            "columns": [BASE_LABEL] + [f"{v.strength:g}" for v in group],
            "rows": [
                (prompt, [cache.get(keys[v][p][0]) for v in [base_variant, *group]])
                for p, prompt in enumerate(prompts[: s.grid_prompts])
            ],
        }
        for label, group in (adapter_variants or {BASE_LABEL: []}).items()
    }
    write_outputs(Path(s.output), results, grids)
    return results


def row_metrics(
    images, prompts, reference_features, inception, clip, s: EvalSettings, batch_size: int
) -> dict:
    """FID, KID (mean, sd over subsets) and CLIP score (mean, sd over images) of one row's images."""
    from trilora.evaluation.inception import inception_features
    from trilora.evaluation.kid import kernel_inception_distance

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


def add_protocol_flags(parser: argparse.ArgumentParser, defaults_from_data: bool = False) -> None:
    """The evaluation flags shared by `evaluate` and `compare` (whose prompts and reference default to --data)."""
    parser.add_argument(
        "--base", required=True, help="Base model: diffusers folder or single-file checkpoint."
    )
    parser.add_argument(
        "--base-config", help="Config folder for a single-file checkpoint that is not SD 1.x-shaped."
    )
    parser.add_argument(
        "--prompts",
        required=not defaults_from_data,
        metavar="FILE|DIR",
        help="Prompts: a text file (one a line) or a folder of .txt captions"
        + (" (default: the --data captions)." if defaults_from_data else "."),
    )
    parser.add_argument(
        "--reference",
        required=not defaults_from_data,
        metavar="DIR",
        help="Folder of real images to compare with"
        + (" (default: the --data images)." if defaults_from_data else "."),
    )
    parser.add_argument(
        "--strengths",
        default="0,0.25,0.5,0.75,1.0",
        help="Adapter strengths, comma-separated (0 = base model).",
    )
    parser.add_argument(
        "--seed", type=int, default=30, help="Image k of each prompt uses seed + k (default: 30)."
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--num-images", type=int, default=1, metavar="K", help="Images per prompt (default: 1)."
    )
    parser.add_argument("--height", type=int, help="Image height (default: the base model's).")
    parser.add_argument("--width", type=int, help="Image width (default: the base model's).")
    parser.add_argument(
        "--scheduler", help="Sampler (default: the base model's own); see `trilora generate --help`."
    )
    parser.add_argument("--batch-size", type=int, default=4, help="Images per generation batch (default: 4).")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--inception-weights",
        metavar="FILE",
        help="pt_inception-2015-12-05-6726825d.pth, the FID network of pytorch-fid and torch-fidelity.",
    )
    parser.add_argument(
        "--clip-model", metavar="DIR", help="A transformers CLIP folder, e.g. openai/clip-vit-large-patch14."
    )
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100).")
    parser.add_argument(
        "--kid-subset-size",
        type=int,
        help="Images per KID subset (default: half the smaller set, at most 1000).",
    )
    parser.add_argument(
        "--clip-tolerance",
        type=float,
        default=1.0,
        help="The recommended strength has the lowest FID among those within this many CLIP-score points "
        "of the best (default: 1).",
    )
    parser.add_argument("--cache", metavar="DIR", help="Cache of generated images (default: OUTPUT/cache).")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an earlier report in --output (default: refuse); its image cache is kept and reused.",
    )


def add_evaluate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora", action="append", default=[], metavar="FILE", help="Adapter to evaluate (repeatable)."
    )
    parser.add_argument(
        "--name", action="append", metavar="NAME", help="Report name of each --lora, in order."
    )
    add_protocol_flags(parser)


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    from trilora.inference.generate import SCHEDULERS

    if args.scheduler and args.scheduler not in SCHEDULERS:
        raise UserError(
            f"--scheduler {args.scheduler} is unknown; choose from {', '.join(sorted(SCHEDULERS))}"
        )
    return Protocol(
        args.seed, args.steps, args.guidance, args.num_images, args.height, args.width, args.scheduler
    )


def settings_from_args(args: argparse.Namespace, loras: list[Path], prompts: list[str], reference: Path,
                       labels: list[str] | None = None) -> EvalSettings:  # fmt: skip
    optional = lambda value: Path(value) if value else None  # noqa: E731
    return EvalSettings(
        base=Path(args.base),
        loras=loras,
        prompts=prompts,
        reference=reference,
        output=Path(args.output),
        inception_weights=optional(args.inception_weights),
        clip_model=optional(args.clip_model),
        strengths=parse_strengths(args.strengths),
        protocol=protocol_from_args(args),
        base_config=optional(args.base_config),
        labels=labels,
        batch_size=args.batch_size,
        device=args.device,
        cache=optional(args.cache),
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        clip_tolerance=args.clip_tolerance,
        overwrite=args.overwrite,
    )


def evaluate_from_args(args: argparse.Namespace) -> dict:
    if not args.lora:
        log.info("evaluate: no --lora given; scoring the base model alone")
    loras = [Path(p) for p in args.lora]
    settings = settings_from_args(args, loras, read_prompts(args.prompts), Path(args.reference), args.name)
    results = evaluate(settings)
    print_summary(results, Path(args.output))
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
