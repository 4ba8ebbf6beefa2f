"""The Inception-v3 network that FID is defined with, in plain torch (no torchvision).

FID numbers are comparable across papers only when computed with one network: the TensorFlow
Inception graph of 2015-12-05 that the original FID code used (Heusel et al. 2017). pytorch-fid and
torch-fidelity ship its weights as `pt_inception-2015-12-05-6726825d.pth`; this module has exactly
that file's tensor names and shapes, so the file loads with no renaming.

It is torchvision's Inception-v3 (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567) with the
TensorFlow graph's quirks: 1008 classes, average pooling in the A, C and first E blocks that does not
count the zero padding, and max pooling in the last E block. Features are the 2048 channels of the
final average pool, computed as pytorch-fid does: images in [0, 1] resized bilinearly to 299x299 and
scaled to [-1, 1].
"""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from trilora.errors import UserError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TensorFlow graph's 1000 ImageNet classes plus 8 unused


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in TensorFlow), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, that averages only real pixels at the border, as TensorFlow's does."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(tf_avg_pool(x)),
        ]
        return torch.cat(branches, 1)  # (B, 224 + pool_features, H, W)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]
        return torch.cat(branches, 1)  # (B, 480 + in_channels, H', W')


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        double = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(double)))
        branches = [
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(tf_avg_pool(x)),
        ]
        return torch.cat(branches, 1)  # (B, 768, H, W)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branches = [
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(seven)),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]
        return torch.cat(branches, 1)  # (B, 512 + in_channels, H', W')


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches; `max_pool` marks the graph's last block (Mixed_7c)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # The TensorFlow graph max-pools in its last block where the paper average-pools.
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else tf_avg_pool(x)
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(single),
            self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double),
            self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ]
        return torch.cat(branches, 1)  # (B, 2048, H, W)


class FIDInceptionV3(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> pool features (B, 2048). `fc` is kept only to load the file."""

    def __init__(self, input_size: int = INPUT_SIZE):
        super().__init__()
        self.input_size = input_size  # tests may use a smaller size; real FID needs 299
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = 2 * x - 1  # (B, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048)


def missing_weights_message(path) -> str:
    return (
        f"Inception weights not found: {path}; download {WEIGHTS_NAME} (the FID network of pytorch-fid "
        f"and torch-fidelity) from {WEIGHTS_URL} and pass it with --inception-weights FILE"
    )


def load_inception(path: str | Path | None) -> FIDInceptionV3:
    """The FID network with the weights in `path`, in eval mode; a wrong or missing file is a UserError."""
    if path is None:
        raise UserError(missing_weights_message("no --inception-weights given"))
    path = Path(path)
    if not path.is_file():
        raise UserError(missing_weights_message(path))
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError) as error:
        raise UserError(f"cannot read Inception weights {path}: {str(error).splitlines()[0]}") from None
    model = FIDInceptionV3()
    check_state_dict(path, state_dict, model.state_dict())
    # Files saved before BatchNorm counted its batches lack num_batches_tracked, which eval mode never reads.
    model.load_state_dict(state_dict, strict=False)
    return model.eval().requires_grad_(False)


def check_state_dict(path: Path, found: dict, expected: dict) -> None:
    """Raise a UserError unless `found` has every tensor of `expected`, in its shape, and nothing else."""
    if not isinstance(found, dict):
        raise UserError(f"{path} holds a {type(found).__name__}, not Inception weights ({WEIGHTS_NAME})")
    optional = {name for name in expected if name.endswith("num_batches_tracked")}
    missing = [name for name in expected if name not in found and name not in optional]
    unexpected = [name for name in found if name not in expected]
    wrong = [name for name in expected if name in found and tuple(found[name].shape) != expected[name].shape]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} tensors missing (e.g. {missing[0]})"
            if missing
            else f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"
            if unexpected
            else f"{wrong[0]} has shape {tuple(found[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        )
        raise UserError(
            f"{path} is not the FID Inception network ({WEIGHTS_NAME} from {WEIGHTS_URL}): {detail}"
        )


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as (3, size, size) in [0, 1], resized bilinearly as pytorch-fid resizes its batches."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
    x = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def inception_features(
    model: FIDInceptionV3, images: list[Image.Image], batch_size: int = 32
) -> torch.Tensor:
    """Pool features (N, 2048), in float64, of PIL images of any sizes, computed on the model's device."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(
            [image_tensor(image, model.input_size) for image in images[start : start + batch_size]]
        )
        chunks.append(model(batch.to(device)).to("cpu", torch.float64))
    return torch.cat(chunks) if chunks else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
