"""`trilora check-data DIR`: what training will make of a folder, before training.

The report counts the images, their sizes and aspect-ratio buckets, summarises the captions,
finds exact duplicates, and lists every problem file with its reason. The problems are found by
the functions training uses (`open_image`, `read_caption_checked` in `trilora.data.folder`),
so the report and the training log say the same things about the same files.
"""

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trilora.data.buckets import make_buckets, nearest_bucket
from trilora.data.folder import CAPTION_KINDS, BadImage, open_image, scan
from trilora.errors import UserError
from trilora.families.sd1 import CONFIGS as SD15_CONFIGS

TOKENIZER_DIR = SD15_CONFIGS / "tokenizer"  # the CLIP BPE vocabulary every SD family tokenizes with
CLIP_TOKEN_LIMIT = 75  # 77 positions less the start and end tokens; SD 1.x truncates the rest
TOP = 10  # how many tags and sizes the report lists
TAG_CHARS = 60  # longer tags are cut in the report


@dataclass(frozen=True)
class FileProblem:
    file: str  # relative to the checked folder
    kind: str  # a kind of trilora.data.folder's *_KINDS
    reason: str
    usable: bool  # whether training uses the image anyway


@dataclass
class Report:
    folder: str
    resolution: int
    images: int  # image files found (by extension)
    usable: int  # images training can use
    sizes: dict = field(default_factory=dict)  # shorter side min/median/max, most common WxH
    buckets: dict[str, int] = field(default_factory=dict)  # "WxH" -> usable images in that bucket
    captions: dict = field(default_factory=dict)  # problem counts, words, CLIP tokens, top tags
    duplicates: list[list[str]] = field(default_factory=list)  # groups of files with identical bytes
    problems: list[FileProblem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)


def check_folder(
    folder: str | Path,
    resolution: int = 512,
    trigger: str | None = None,
    caption_extension: str = ".txt",
    count_tokens: bool = True,
) -> Report:
    """Open every image of `folder` (as `scan` finds them) and report on them; see the module doc."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    if resolution < 8:
        raise UserError(f"--resolution {resolution}: must be at least 8 pixels")
    items = scan(folder, trigger, caption_extension)
    buckets = make_buckets(resolution)
    problems, sizes, captions = [], [], []
    by_hash = defaultdict(list)
    for item in items:
        name = item.image.relative_to(folder).as_posix()
        try:
            opened = open_image(item.image, resolution)
        except BadImage as error:
            problems.append(FileProblem(name, error.kind, str(error), usable=False))
        else:
            problems += [FileProblem(name, p.kind, p.reason, usable=True) for p in opened.problems]
            sizes.append(opened.image.size)
            captions.append(item.caption)
            by_hash[opened.sha256].append(name)
            if item.caption_problem:  # the caption of an unusable image does not matter
                problem = item.caption_problem
                problems.append(FileProblem(name, problem.kind, problem.reason, usable=True))
    histogram = Counter(nearest_bucket(width, height, buckets) for width, height in sizes)
    shorter = [min(size) for size in sizes]
    return Report(
        folder=str(folder),
        resolution=resolution,
        images=len(items),
        usable=len(sizes),
        sizes={
            "shorter_side": summary(shorter, digits=0),
            "common": [[f"{w}x{h}", n] for (w, h), n in Counter(sizes).most_common(TOP)],
        },
        buckets={f"{w}x{h}": histogram[(w, h)] for w, h in sorted(histogram)},
        captions=caption_statistics(captions, problems, count_tokens),
        duplicates=[group for group in by_hash.values() if len(group) > 1],
        problems=problems,
    )


def summary(values: list[float], digits: int = 1) -> dict:
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {
        "min": min(values),
        "median": round(statistics.median(values), digits),
        "mean": round(statistics.fmean(values), digits),
        "max": max(values),
    }


def shorten(text: str, most: int = TAG_CHARS) -> str:
    """A tag for the report: a caption without commas is one "tag", possibly thousands of words long."""
    return text if len(text) <= most else text[: most - 1].rstrip() + "…"


def caption_statistics(captions: list[str], problems: list[FileProblem], count_tokens: bool) -> dict:
    """Of the usable images' captions as trained (trigger included): words, CLIP tokens, top tags."""
    tags = Counter(tag for caption in captions for tag in {t.strip() for t in caption.split(",")} - {""})
    stats = {
        "problems": {kind: sum(p.kind == kind for p in problems) for kind in CAPTION_KINDS},
        "with_text": sum(bool(caption) for caption in captions),
        "words": summary([len(caption.split()) for caption in captions]),
        "top_tags": [
            [shorten(tag), n] for tag, n in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        ],
    }
    if count_tokens:
        tokens = clip_token_counts(captions)
        stats["clip_tokens"] = summary(tokens) | {
            "over_limit": sum(n > CLIP_TOKEN_LIMIT for n in tokens),
            "limit": CLIP_TOKEN_LIMIT,
        }
    return stats


def clip_token_counts(captions: list[str]) -> list[int]:
    """Tokens per caption with SD 1.x's CLIP tokenizer (shipped in the package), start and end excluded."""
    if not captions:
        return []
    # here, not at the top: transformers (~1 s), which importing this module does not need
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return [len(ids) - 2 for ids in tokenizer(captions).input_ids]


def require_usable(report: Report) -> None:
    """Nothing to train on is an error (exit code 2); problems with some files are only warnings."""
    if not report.usable:
        raise UserError(
            f"none of the {report.images} images in {report.folder} can be used; the reasons are listed above"
        )


def format_report(report: Report) -> str:
    """The report for people: one section per topic, problem files last."""
    lines = [
        f"{report.folder} at resolution {report.resolution}",
        f"images: {report.images} found, {report.usable} usable, {report.images - report.usable} unusable",
    ]
    shorter = report.sizes["shorter_side"]
    if report.usable:
        common = ", ".join(f"{size} ({n})" for size, n in report.sizes["common"][:5])
        lines.append(
            f"sizes: shorter side {shorter['min']}-{shorter['max']} px (median {shorter['median']:g}); "
            f"most common: {common}"
        )
        lines.append("buckets (width x height: images):")
        most = max(report.buckets.values())
        for bucket, n in report.buckets.items():
            lines.append(f"  {bucket:>9} {n:5d}  {'#' * max(1, round(40 * n / most))}")
    captions = report.captions
    counts = ", ".join(f"{n} {CAPTION_KINDS[kind]}" for kind, n in captions["problems"].items() if n)
    lines.append(f"captions: {captions['with_text']} of {report.usable} usable images have text"
                 + (f"; caption files {counts}" if counts else ""))  # fmt: skip
    missing = sum(captions["problems"].get(kind, 0) for kind in ("caption-missing", "caption-empty"))
    if missing:
        lines.append(f"  {missing} images have no caption: `trilora caption {report.folder} --model PATH` "
                     "writes them (BLIP or a WD14 tagger; see its --help)")  # fmt: skip
    if report.usable:
        words = captions["words"]
        lines.append(f"  words: min {words['min']}, mean {words['mean']:g}, max {words['max']}")
        if "clip_tokens" in captions:
            tokens = captions["clip_tokens"]
            lines.append(
                f"  CLIP tokens: min {tokens['min']}, mean {tokens['mean']:g}, max {tokens['max']}; "
                f"{tokens['over_limit']} over the {tokens['limit']}-token limit (the rest is cut off in training)"
            )
        if captions["top_tags"]:
            lines.append("  top tags: " + ", ".join(f"{tag} ({n})" for tag, n in captions["top_tags"]))
    if report.duplicates:
        lines.append(f"exact duplicates (identical bytes): {len(report.duplicates)} group(s)")
        lines += ["  " + " = ".join(group) for group in report.duplicates]
    if report.problems:
        files = len({p.file for p in report.problems})
        lines.append(f"problems: {len(report.problems)} in {files} file(s)")
        for usable, title in (
            (False, "unusable, training skips them"),
            (True, "warnings, training uses them"),
        ):
            chosen = [p for p in report.problems if p.usable == usable]
            if chosen:
                lines.append(f"  {title}:")
                lines += [f"    {p.file}: {p.reason}" for p in chosen]
    else:
        lines.append("problems: none")
    return "\n".join(lines)
