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
    values = top_singular_values(flat(weight).float(), rank)
    values = values / values[0].clamp_min(1e-12)
    if rank > values.numel():
        values = torch.cat([values, values[-1].expand(rank - values.numel())])
    return torch.diag(values[:rank])


def top_singular_values(matrix: torch.Tensor, k: int, power_iterations: int = 4) -> torch.Tensor:
    """The k largest singular values of a 2-D matrix (all of them if it has fewer), descending.

    Sigma's initialisation needs only s_1..s_r, not all min(out, in) of them: a randomised range
    finder (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1) with 2k + 16 probe vectors
    and `power_iterations` re-orthonormalised power steps, on the matrix's own device. Each
    estimate is a lower bound of the true value; on Gaussian matrices (a flat spectrum, the worst
    case) s_i/s_1 is within 0.03 of svdvals' at SD 1.5's shapes, and far closer on trained weights,
    whose spectra decay (tests/adapters/test_math.py). Small matrices take the exact route. The
    probe vectors come from a fixed seed: no global random state is used or changed.
    """
    rows, cols = matrix.shape
    probes = 2 * k + 16
    if min(rows, cols) <= 2 * probes or matrix.is_meta:  # meta: --dry-run's shapes-only model
        return torch.linalg.svdvals(matrix)[:k]
    tall = matrix if rows >= cols else matrix.T  # (m, n), m >= n
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    omega = torch.randn(tall.shape[1], probes, generator=generator, device=matrix.device, dtype=matrix.dtype)
    basis = torch.linalg.qr(tall @ omega).Q  # (m, probes): an orthonormal basis of the top range
    for _ in range(power_iterations):
        basis = torch.linalg.qr(tall @ torch.linalg.qr(tall.T @ basis).Q).Q
    return torch.linalg.svdvals(basis.T @ tall)[:k]  # of a (probes, n) matrix: cheap


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
