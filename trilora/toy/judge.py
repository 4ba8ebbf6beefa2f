"""The toy judge: a small CNN that reads style, colour, floors and time of day off a 32 px image.

It scores what a model generated in the toy world (`trilora.toy.world`): `Judge.predict` gives the
attributes it sees, `Judge.features` its penultimate features, the feature space of the toy FID
(`trilora.toy.metrics.toy_fid`). Its heads cover every style, the unseen ones included.

Architecture (32 px in): four 3x3 conv + BatchNorm + ReLU layers of 32, 64, 64 and 128 channels
with 2x2 max-pools after the first, third and fourth (32 -> 16 -> 8 -> 4 px); the 128x4x4 map
flattened into one shared linear layer of FEATURE_DIM units + ReLU (the features); one linear
head per attribute. About 0.40 M parameters.

The shipped weights (judge.safetensors, fp16, 0.79 MB) were written by

    .venv/bin/python scripts/train_toy_judge.py --seed 0

(defaults: 30,000 renders over all six styles with render seeds below TRAIN_SEED_LIMIT, 500 steps
of batch 128, 1 thread; 300-380 s on a shared 2-core CPU; a second run wrote the same bytes), with
mild augmentation (shifts of up to 2 px, brightness and contrast jitter, Gaussian noise,
sometimes a slight blur). On 2,000 fresh renders with render seeds from EVAL_SEED_START it printed:

    clean:     style 99.95 %  colour 100.00 %  floors 99.90 %  time 100.00 %  all 99.85 %
    augmented: style 99.80 %  colour 100.00 %  floors 99.85 %  time 100.00 %  all 99.65 %
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from trilora.toy.world import COLOURS, FLOORS, STYLES, TIMES, Attributes

WEIGHTS = Path(__file__).with_name("judge.safetensors")
SIZE = 32
FEATURE_DIM = 128
CLASSES = {"style": STYLES, "colour": tuple(COLOURS), "floors": FLOORS, "time": TIMES}
TRAIN_SEED_LIMIT = 1_000_000  # training renders use render seeds in [0, TRAIN_SEED_LIMIT)
EVAL_SEED_START = 1_000_000_000  # held-out renders use render seeds from here on


def _conv(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class Judge(nn.Module):
    """Images (N, 3, 32, 32) in [-1, 1] -> logits per attribute; see the module doc for the layers."""

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            *_conv(3, 32),
            nn.MaxPool2d(2),  # (N, 32, 16, 16)
            *_conv(32, 64),
            *_conv(64, 64),
            nn.MaxPool2d(2),  # (N, 64, 8, 8)
            *_conv(64, 128),
            nn.MaxPool2d(2),  # (N, 128, 4, 4)
        )
        self.features_layer = nn.Linear(128 * 4 * 4, feature_dim)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(feature_dim, len(classes)) for name, classes in CLASSES.items()}
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim) of a batch already in the judge's input format."""
        return F.relu(self.features_layer(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.embed(x)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def features(self, images, batch_size: int = 256) -> torch.Tensor:
        """Penultimate features (N, feature_dim), float32 on the CPU, of images (see `to_judge_input`)."""
        x = to_judge_input(images)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = torch.cat(
            [self.embed(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        )
        self.train(was_training)
        return out

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> list[Attributes]:
        """The attributes the judge sees in each image (see `to_judge_input` for what images may be)."""
        x = to_judge_input(images)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        indices = {name: [] for name in CLASSES}
        for i in range(0, len(x), batch_size):
            for name, logits in self(x[i : i + batch_size].to(device)).items():
                indices[name].append(logits.argmax(dim=1).cpu())
        self.train(was_training)
        columns = {name: torch.cat(parts).tolist() for name, parts in indices.items()}
        return [Attributes(*(CLASSES[name][columns[name][k]] for name in CLASSES)) for k in range(len(x))]


def to_judge_input(images) -> torch.Tensor:
    """Images as the judge reads them: float32 (N, 3, 32, 32) in [-1, 1].

    Takes a tensor (N, 3, H, W) in [-1, 1] (as a VAE decodes) or a list of PIL images; other
    sizes are resized to 32 px (box filter for PIL, antialiased bilinear for tensors).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W); got {tuple(images.shape)}")
        x = images.detach().float().cpu()
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        return x.clamp(-1, 1)
    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a tensor or PIL images; got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(image))
    if not arrays:
        return torch.zeros(0, 3, SIZE, SIZE)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (N, 3, 32, 32) in [0, 255]
    return x / 127.5 - 1


def targets(attributes: list[Attributes]) -> dict[str, torch.Tensor]:
    """Class indices (N,) per attribute, in the order of CLASSES."""
    return {
        name: torch.tensor([classes.index(getattr(a, name)) for a in attributes])
        for name, classes in CLASSES.items()
    }


def load_judge(path: str | Path = WEIGHTS, device: str | torch.device = "cpu") -> Judge:
    """The shipped judge (or one saved by scripts/train_toy_judge.py at `path`), in eval mode, float32."""

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("classes") != judge_metadata()["classes"]:
        raise ValueError(f"{path} was trained for other classes; retrain it with scripts/train_toy_judge.py")
    judge = Judge(int(metadata.get("feature_dim", FEATURE_DIM)))
    state = load_file(str(path))
    judge.load_state_dict({name: t.float() if t.is_floating_point() else t for name, t in state.items()})
    return judge.to(device).eval()


def judge_metadata(feature_dim: int = FEATURE_DIM) -> dict[str, str]:
    """What `load_judge` checks in a weights file: the class lists and the feature size."""
    return {
        "classes": json.dumps({name: list(classes) for name, classes in CLASSES.items()}),
        "feature_dim": str(feature_dim),
    }
