"""Caption every image of a folder that has no caption yet: batched, resumable (a rerun skips what
is done), each caption written atomically as it is made; unusable images are named and skipped."""

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from trilora.captioning.models import load_captioner, model_kind
from trilora.config import CaptionConfig, Tree
from trilora.data.captions import split_tags
from trilora.data.folder import BadImage, open_image, scan
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.files import write_text
from trilora.outputs import refuse_foreign_files

log = logging.getLogger("trilora")
TOP = 10  # words or tags in the summary
CAPTION_BYTES = 1 << 20  # a larger "caption" is some other file


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # had a caption already
    skipped: dict[Path, str] = field(default_factory=dict)  # image -> why it cannot be used
    top: list[tuple[str, int]] = field(default_factory=list)  # most common words (or tags) written


def needs_caption(item, overwrite: bool) -> bool:
    """Missing or empty caption files are captioned; others only with --overwrite."""
    problem = item.caption_problem
    return overwrite or (problem is not None and problem.kind in ("caption-missing", "caption-empty"))


def with_prefix(caption: str, prefix: str | None) -> str:
    return f"{prefix}, {caption}" if prefix and caption else (prefix or caption)


def caption_folder(folder: str | Path, settings: CaptionConfig, extension: str = ".txt") -> Outcome:
    settings.validate()
    model_kind(settings.model)  # a wrong --model stops here, before any image is opened
    device = resolve_device(settings.device)
    items = scan(folder, None, extension)
    outcome = Outcome()
    todo = []
    for item in items:
        (todo if needs_caption(item, settings.overwrite) else outcome.kept).append(item.image)
    refuse_foreign_files([path.with_suffix(extension) for path in todo], is_caption_file, "caption")
    log.info("caption: %d of %d images to caption in %s", len(todo), len(items), folder)
    captioner = load_captioner(settings, device) if todo else None
    counts = Counter()
    with tqdm(total=len(todo), desc="captioning", unit="image") as progress:  # closed on an error too
        caption_batches(todo, settings, extension, captioner, outcome, counts, progress)
    outcome.top = counts.most_common(TOP)
    return outcome


def caption_batches(todo, settings, extension, captioner, outcome, counts, progress) -> None:
    for start in range(0, len(todo), settings.batch_size):
        batch, images = [], []
        for path in todo[start : start + settings.batch_size]:
            try:
                images.append(open_image(path, resolution=1).image)
                batch.append(path)
            except BadImage as error:
                outcome.skipped[path] = str(error)
                log.warning("caption: skipping %s: %s", path, error)
        for path, text in zip(batch, captioner(images) if images else [], strict=True):
            text = with_prefix(text, settings.prefix)
            write_text(path.with_suffix(extension), text + "\n")
            outcome.written.append(path)
            counts.update(split_tags(text) if "," in text else text.lower().split())
        progress.update(len(todo[start : start + settings.batch_size]))


def is_caption_file(path: Path) -> bool:
    """A file a caption may replace: small UTF-8 text (what captioners and people write)."""
    try:
        if path.stat().st_size > CAPTION_BYTES:
            return False
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return b"\0" not in data


def caption_command(tree: Tree) -> Outcome:
    data, settings = tree.data, tree.caption
    if not data.data:
        raise UserError("no folder to caption: give it as `trilora caption DIR --model PATH`")
    outcome = caption_folder(data.data, settings, data.caption_extension)
    kept = " (they had one; --overwrite replaces them)" if outcome.kept else ""
    print(
        f"captions: {len(outcome.written)} written, {len(outcome.kept)} kept{kept}, {len(outcome.skipped)} skipped"
    )
    for path, reason in outcome.skipped.items():
        print(f"  skipped {path}: {reason}")
    if outcome.top:
        print("most common: " + ", ".join(f"{word} ({n})" for word, n in outcome.top))
    return outcome
