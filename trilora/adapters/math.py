"""Pure tensor math of LoRA and TriLoRA. No modules, no state.

LoRA (Hu et al. 2021):      dW = (alpha/r) * B @ A           A: (r, in), B: (out, r)
TriLoRA (seed 001, eq. 5):  dW = (alpha/r) * B @ C @ A       C = Sigma: (r, r)
For convolutions A holds the kernel, (r, in, kh, kw), and B, C are 1x1; flattening A to
(r, in*kh*kw) makes every formula here the linear one.
"""

import torch

UP_INIT_GAIN = 1.4  # see up_init_std


def flat(weight: torch.Tensor) -> torch.Tensor:
    """A Linear (out, in) or conv (out, in, kh, kw) weight as a 2-D matrix (out, in*kh*kw)."""
    return weight.reshape(weight.shape[0], -1)


def fold(down: torch.Tensor, up: torch.Tensor, mid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """TriLoRA's three factors as a standard LoRA pair: down = A, up = B @ C (exact)."""
    if mid is None:
        return down, up
    folded = flat(up) @ mid  # (out, r)
    return down, folded.reshape(up.shape)


def delta_weight(
    down: torch.Tensor, up: torch.Tensor, mid: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """The weight update scale * B @ [C @] A, shaped like the base weight (out, in[, kh, kw])."""
    down, up = fold(down, up, mid)
    delta = scale * (flat(up) @ flat(down))  # (out, in*kh*kw)
    return delta.reshape(up.shape[0], *down.shape[1:])


def sigma_init(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """Sigma_0 = diag(s_1..s_r) / s_1 from the singular values of the frozen weight (flattened to 2-D).

    Normalising by s_1 keeps the scale of dW independent of the base layer's norm.
    A rank above the weight's own rank repeats the smallest singular value.
    """
    values = torch.linalg.svdvals(flat(weight).float())
    values = values / values[0].clamp_min(1e-12)
    if rank > values.numel():
        values = torch.cat([values, values[-1].expand(rank - values.numel())])
    return torch.diag(values[:rank])


def up_init_std(fan_in: int, rank: int, mid: torch.Tensor) -> float:
    """Std of TriLoRA's Gaussian B, chosen so that AdamW's first steps move the layer output about
    as fast as LoRA's do at the same lr and alpha.

    LoRA starts with B = 0, A ~ U(+-1/sqrt(in)); Adam's first steps move every B entry by ~lr
    coherently, so the output moves by ~ scale * lr * r * E|A x|, which does not depend on `in`.
    TriLoRA starts with A = 0; Adam moves every A entry by ~lr, so A x grows by ~ lr * in * E|x|
    and the output by ~ scale * lr * in * E|x| * std(B) * |diag C|. Equal movement needs
    std(B) = gain * r / (in * |diag C|). The gain was measured with benchmarks/init_scale.py:
    with gain 1.4, TriLoRA/LoRA output movement after 1, 10 and 100 AdamW steps is 0.67-1.08 on
    SD-1.5-sized linear and 1x1-conv layers (geometric mean 0.91).
    """
    return UP_INIT_GAIN * rank / (fan_in * float(torch.linalg.vector_norm(torch.diagonal(mid))))
