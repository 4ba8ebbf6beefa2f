"""WD14-style taggers (SmilingWolf's wd-*-tagger ONNX models) with onnxruntime, from a local folder.

The model reads NHWC float32 images in BGR order, 0-255, padded to a square with white and resized
to its input size (448 for the v2 and v3 taggers); it gives one probability per row of
selected_tags.csv (columns tag_id, name, category, count; category 9 = rating, 0 = general,
4 = character). A caption is the character tags above --character-threshold, then the general
tags above --general-threshold, each group by confidence, joined with ", " so that
--shuffle-captions and --keep-tokens work on them. Rating tags are not written.
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from trilora.config import CaptionConfig
from trilora.errors import UserError

GENERAL, CHARACTER = 0, 4


def read_tags(path: Path) -> list[tuple[str, int]]:
    """(name, category) of each output, in order."""
    try:
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
        tags = [(row["name"], int(row["category"])) for row in rows]
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{path} is not a tagger's tag list (columns tag_id,name,category,count): {error}"
        ) from None
    if not tags:
        raise UserError(f"{path} lists no tags")
    return tags


def spoken(tag: str) -> str:
    """`long_hair` -> `long hair`; emoticons such as `^_^` keep their underscores."""
    return tag.replace("_", " ") if any(c.isalnum() for c in tag) else tag


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """HWC float32 BGR 0-255: the image centred on a white square, resized to size x size."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(canvas, dtype=np.float32)[:, :, ::-1]


class Tagger:
    def __init__(self, folder: Path, settings: CaptionConfig, device):
        try:  # an optional dependency (the tagger extra)
            import onnxruntime
        except ImportError:
            raise UserError("the WD14 tagger needs onnxruntime: pip install 'trilora[tagger]' "
                            "(onnxruntime-gpu for CUDA)") from None  # fmt: skip
        self.tags = read_tags(folder / "selected_tags.csv")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise UserError(
                f"cannot load {folder / 'model.onnx'}: {str(error).splitlines()[0][:200]}"
            ) from None
        model_input = self.session.get_inputs()[0]
        height = model_input.shape[1]
        self.size = height if isinstance(height, int) else 448
        self.input_name, self.settings = model_input.name, settings
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.tags):
            raise UserError(
                f"{folder}: model.onnx gives {outputs} tags but selected_tags.csv lists {len(self.tags)}"
            )

    def __call__(self, images) -> list[str]:
        batch = np.stack([square_pixels(image, self.size) for image in images])
        probabilities = self.session.run(None, {self.input_name: batch})[0]
        return [self.caption(row) for row in probabilities]

    def caption(self, probabilities: np.ndarray) -> str:
        s = self.settings
        name = (lambda tag: tag) if s.keep_underscores else spoken
        undesired = {name(t.strip()) for t in s.undesired_tags}
        chosen = {CHARACTER: [], GENERAL: []}
        for (tag, category), p in zip(self.tags, probabilities, strict=True):
            threshold = {GENERAL: s.general_threshold, CHARACTER: s.character_threshold}.get(category)
            if threshold is not None and p >= threshold and name(tag) not in undesired:
                chosen[category].append((float(p), name(tag)))
        by_confidence = lambda found: sorted(found, key=lambda pair: (-pair[0], pair[1]))  # noqa: E731
        ordered = by_confidence(chosen[CHARACTER]) + by_confidence(chosen[GENERAL])
        return ", ".join(tag for _, tag in ordered)
