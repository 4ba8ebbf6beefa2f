"""The adapter layer: a frozen base Linear or Conv2d plus a trainable low-rank update.

    y = base(x) + scale * up(mid(down(x)))

`mid` is TriLoRA's Sigma (r, r); a plain LoRA layer has none. Adapter weights are kept in fp32
whatever the base dtype, so that bf16/fp16 base models train with full-precision updates.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from trilora.adapters.math import delta_weight, sigma_init, up_init_std


class AdapterLayer(nn.Module):
    def __init__(
        self,
        base: nn.Linear | nn.Conv2d,
        method: str,
        rank: int,
        alpha: float,
        sigma: str = "svd",
        dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise ValueError("grouped convolutions are not supported")
        self.base = base.requires_grad_(False)
        self.method, self.rank, self.alpha = method, rank, float(alpha)
        self.scale = self.alpha / rank
        self.multiplier = 1.0  # strength at inference; 0 disables the adapter
        self.dropout = (
            nn.Dropout(dropout) if dropout else nn.Identity()
        )  # on the adapter's input, as PEFT does
        kwargs = dict(device=base.weight.device, dtype=torch.float32)
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False, **kwargs)
            self.up = nn.Linear(rank, base.out_features, bias=False, **kwargs)
        else:
            self.down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                bias=False, **kwargs,
            )  # fmt: skip
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **kwargs)
        self.mid = None
        if method == "trilora":
            mid = sigma_init(base.weight, rank) if sigma == "svd" else torch.eye(rank)
            self.mid = nn.Parameter(mid.to(**kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mid is None:  # LoRA: A Kaiming-uniform, B zero
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:  # TriLoRA (paper section 3.3): U = B Gaussian, V^T = A zero
            fan_in = self.down.weight[0].numel()
            nn.init.normal_(self.up.weight, std=up_init_std(fan_in, self.rank, self.mid.detach()))
            nn.init.zeros_(self.down.weight)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.multiplier == 0:
            return y
        x = self.dropout(x if torch.is_autocast_enabled() else x.to(self.down.weight.dtype))
        h = self.down(x)  # (..., r)
        if self.mid is not None:
            h = F.conv2d(h, self.mid[:, :, None, None]) if self.is_conv else F.linear(h, self.mid)
        return y + (self.up(h) * (self.scale * self.multiplier)).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        return delta_weight(self.down.weight, self.up.weight, self.mid, self.scale * self.multiplier)

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}, alpha={self.alpha:g}"
