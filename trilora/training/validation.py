"""Validation loss with fixed noise, and early stopping on it.

Every evaluation uses the same images, the same timesteps spread over the schedule and the same
noise, so two points of the curve differ only because the adapter changed (seed 000: the held-out
loss tells where to stop).
"""

import math
from dataclasses import dataclass

import torch

from trilora.seeds import derive_seed


@dataclass
class ValidationSet:
    latents: list[torch.Tensor]  # N of (C, h, w); h, w may differ (buckets)
    condition: torch.Tensor  # (N, 77, D) embeddings, or (N, 77) token ids encoded at each validation
    timesteps: torch.Tensor  # (K,)
    noise: list[torch.Tensor]  # N of (K, C, h, w)
    sizes: torch.Tensor  # (N, 6) each image's size conditioning (SDXL's time_ids)


def validation_on(v: ValidationSet, device: torch.device) -> ValidationSet:
    return ValidationSet([t.to(device) for t in v.latents], v.condition.to(device), v.timesteps.to(device),
                         [t.to(device) for t in v.noise], v.sizes.to(device))  # fmt: skip


def validation_timesteps(count: int, num_train_timesteps: int) -> torch.Tensor:
    """`count` timesteps at the centres of equal slices of [0, T): e.g. 4 of 1000 -> 125, 375, 625, 875."""
    return ((torch.arange(count) + 0.5) * num_train_timesteps / count).long()


def make_validation_set(
    latents: list[torch.Tensor],
    condition: torch.Tensor,
    num_timesteps: int,
    num_train_timesteps: int,
    seed: int,
    sizes: torch.Tensor,
) -> ValidationSet:
    generator = torch.Generator().manual_seed(derive_seed(seed, "validation"))
    noise = [torch.randn((num_timesteps, *latent.shape), generator=generator) for latent in latents]
    timesteps = validation_timesteps(num_timesteps, num_train_timesteps)
    return ValidationSet(latents, condition, timesteps, noise, sizes)


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, 0.0
    return mean, values.std().item() / math.sqrt(values.numel())


def by_timestep(losses: torch.Tensor, timesteps: torch.Tensor) -> dict[int, float]:
    """Mean over the images of each timestep's loss: `losses` is (images, K), `timesteps` (K,)."""
    return {int(t): float(m) for t, m in zip(timesteps.tolist(), losses.mean(0).tolist(), strict=True)}


def mid_range(by_t: dict[int, float], num_train_timesteps: int) -> float:
    """The mean loss over the validation timesteps in the middle half of the schedule, T/4 <= t < 3T/4
    (all timesteps when none falls there): where the loss depends most on what the adapter learnt."""
    mid = [
        loss for t, loss in by_t.items() if num_train_timesteps / 4 <= int(t) < 3 * num_train_timesteps / 4
    ]
    mid = mid or list(by_t.values())
    return sum(mid) / len(mid)


def signal_value(stop_on: str, val_loss: float, by_t: dict[int, float], num_train_timesteps: int) -> float:
    """The value early stopping follows (lower is better): the validation loss, or its mid-range part."""
    return mid_range(by_t, num_train_timesteps) if stop_on == "val_loss_mid" else val_loss


class EarlyStopping:
    """Counts validations without an improvement of more than `min_delta`; patience 0 never stops.
    `margin`: a validation counts against patience only when it is worse than the best by more than
    its standard error (a rise the error bars cannot explain). `window`: what is compared is the mean
    of the last `window` values (a noisy signal's lucky spike does not become the best), and the best
    step is the last of its window."""

    def __init__(self, patience: int, min_delta: float = 0.0, margin: bool = False, window: int = 1):
        self.patience, self.min_delta, self.margin, self.window = patience, min_delta, margin, window
        self.best_loss, self.best_step, self.bad_validations = math.inf, None, 0
        self.best_val_loss = math.inf  # the validation loss at best_step (best_loss is the signal's value)
        self.recent: list[float] = []  # the last `window` values

    def update(self, value: float, step: int, se: float = 0.0, val_loss: float | None = None) -> bool:
        """Record a validation (the signal's value, its standard error and the validation loss); True when
        it is the new best."""
        self.recent = [*self.recent, value][-self.window :]
        value = sum(self.recent) / len(self.recent)
        if value < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_validations = value, step, 0
            self.best_val_loss = value if val_loss is None else val_loss
            return True
        if not self.margin or value > self.best_loss + se:
            self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience

    def state_dict(self) -> dict:
        """The counters only: patience, min_delta and window are settings, which may change on resume."""
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "best_val_loss": self.best_val_loss,
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_step = state["best_loss"], state["best_step"]
        self.bad_validations = state["bad_validations"]
        self.best_val_loss = state.get("best_val_loss", self.best_loss)  # checkpoints from before stop_on
        self.recent = list(state.get("recent", []))[-self.window :]  # checkpoints from before the window
