"""What changes as a run trains, in one object; `state_dict()` is the plain dict a checkpoint holds.

nanoGPT's checkpoint is a dict of model, optimizer, iteration and best validation loss; ours adds
the early-stopping counters, the best adapter so far, the EMA weights and the metrics rows (so a
checkpoint alone can continue a run, in its folder or in a new one).
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from trilora.adapters.inject import adapter_state_dict, load_adapter_state_dict, of_part, with_part
from trilora.training.ema import EMA
from trilora.training.metrics import MetricsLog
from trilora.training.validation import EarlyStopping


@dataclass
class TrainingState:
    models: dict[
        str, nn.Module
    ]  # the models with adapters: "unet" and, with --train-text-encoder, "text_encoder"
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    metrics: MetricsLog
    ema: EMA | None = None
    step: int = 0  # optimiser steps done
    best_state: dict[str, torch.Tensor] | None = None  # the adapter of the best validation so far

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapters' factors, keyed `<part>.<module path>.down|mid|up`."""
        return {
            k: v for part, m in self.models.items() for k, v in with_part(part, adapter_state_dict(m)).items()
        }

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        for part, model in self.models.items():
            load_adapter_state_dict(model, of_part(part, state))

    def averaged(self):
        """The EMA weights in the models for the duration, with --ema; else nothing changes."""
        return self.ema.applied() if self.ema else contextlib.nullcontext()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "adapter": self.adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "stopper": self.stopper.state_dict(),
            "best_state": self.best_state,
            "ema": self.ema.state_dict() if self.ema else None,
            "metrics": list(self.metrics.rows),
        }

    def load_state_dict(self, state: dict) -> None:
        """Everything but the metrics rows, which the caller restores (it knows where they go)."""
        self.load_adapter_state(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.stopper.load_state_dict(state["stopper"])
        self.step, self.best_state = state["step"], state["best_state"]
