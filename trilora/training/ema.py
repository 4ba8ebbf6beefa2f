"""An exponential moving average of the adapter weights (Polyak averaging), kept in fp32."""

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * weights, after each optimiser step."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - self.decay)

    @contextmanager
    def applied(self):
        """The averaged weights in the model for the duration (validation, export), then the trained ones."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    def state_dict(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.shadow]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        self.shadow = [s.clone().to(p.device) for s, p in zip(state, self.params, strict=True)]
