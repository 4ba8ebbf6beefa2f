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


def validation_timesteps(count: int, num_train_timesteps: int) -> torch.Tensor:
    """`count` timesteps at the centres of equal slices of [0, T): e.g. 4 of 1000 -> 125, 375, 625, 875."""
    return ((torch.arange(count) + 0.5) * num_train_timesteps / count).long()


def make_validation_set(
    latents: list[torch.Tensor],
    condition: torch.Tensor,
    num_timesteps: int,
    num_train_timesteps: int,
    seed: int,
) -> ValidationSet:
    generator = torch.Generator().manual_seed(derive_seed(seed, "validation"))
    noise = [torch.randn((num_timesteps, *latent.shape), generator=generator) for latent in latents]
    return ValidationSet(latents, condition, validation_timesteps(num_timesteps, num_train_timesteps), noise)


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, 0.0
    return mean, values.std().item() / math.sqrt(values.numel())


def by_timestep(losses: torch.Tensor, timesteps: torch.Tensor) -> dict[int, float]:
    """Mean over the images of each timestep's loss: `losses` is (images, K), `timesteps` (K,)."""
    return {int(t): float(m) for t, m in zip(timesteps.tolist(), losses.mean(0).tolist(), strict=True)}


class EarlyStopping:
    """Counts validations without an improvement of more than `min_delta`; patience 0 never stops."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_step, self.bad_validations = math.inf, None, 0

    def update(self, loss: float, step: int) -> bool:
        """Record a validation; True when it is the new best."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_validations = loss, step, 0
            return True
        self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience

    def state_dict(self) -> dict:
        """The counters only: patience and min_delta are settings, which may change on resume."""
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_step = state["best_loss"], state["best_step"]
        self.bad_validations = state["bad_validations"]
