"""Learning-rate schedules as pure functions of the step (nanoGPT's get_lr)."""

import math


def lr_at(
    step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "constant"
) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then constant or cosine to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
