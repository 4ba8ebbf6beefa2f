"""`--device` names to torch devices, checked: one place for train, generate and evaluate."""

import re

from trilora.errors import UserError

DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(name: str, local_rank: int = 0):
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    import torch

    if not DEVICE_NAME.fullmatch(name):
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: no Apple GPU is available here; use --device cpu")
    return torch.device(name)
