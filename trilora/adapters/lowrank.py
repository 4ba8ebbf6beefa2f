"""Pure math of the adapter toolbox (resize, merge, extract): best low-rank approximations.

Eckart–Young: of all rank-k matrices, the truncated SVD U_k S_k V_kᵀ is nearest to M in the
Frobenius norm, and its error is the tail of the singular values, ‖M − M_k‖² = Σ_{i>k} s_i².

A LoRA pair's ΔW = B·A (B: out × r, A: r × in) has rank ≤ r, so its SVD never needs ΔW itself:
with B = Q_b R_b and Aᵀ = Q_a R_a (thin QR), B·A = Q_b (R_b R_aᵀ) Q_aᵀ, and the SVD of the r × r
core gives U = Q_b U_c, V = Q_a V_c: O((out + in)·r²) work instead of O(out·in·min(out, in)).
TriLoRA's B·Σ·A is the same with B·Σ as B (fold). Convolution factors are flattened to 2-D
(`flat`) and shaped back by the caller.
"""

from dataclasses import dataclass

import torch

from trilora.adapters.math import flat


@dataclass
class Kept:
    """What a rank-k truncation kept of one module: its rank before and after, the share of the
    Frobenius energy kept (Σ_{i≤k} s_i² / Σ s_i², 1 for a zero update) and the relative error
    ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F (0 for a zero update); `total`: ‖ΔW‖_F², which weighs it in a sum."""

    rank_before: int
    rank: int
    energy: float
    error: float
    total: float


def product_svd(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of flat(up) @ flat(down) without forming it, in fp64: U (out, r), S (r,)
    descending, Vh (r, in)."""
    b, a = flat(up).double(), flat(down).double()
    q_b, r_b = torch.linalg.qr(b)  # (out, r), (r, r)
    q_a, r_a = torch.linalg.qr(a.T)  # (in, r), (r, r)
    u_c, s, vh_c = torch.linalg.svd(r_b @ r_a.T)
    return q_b @ u_c, s, vh_c @ q_a.T


def matrix_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of a 2-D matrix, thin, in fp32 on its own device (a full-rank ΔW: extract)."""
    return torch.linalg.svd(matrix.float(), full_matrices=False)


def choose_rank(
    s: torch.Tensor, rank: int | None = None, energy: float | None = None, max_error: float | None = None
) -> int:
    """How many singular values to keep: `rank` (at most as many as there are), else the fewest that
    keep `energy` of Σ s², else the fewest whose relative Frobenius error is at most `max_error`.
    At least 1."""
    if rank is not None:
        return max(1, min(rank, s.numel()))
    squares = s.double().square()
    total = float(squares.sum())
    if total == 0:
        return 1
    kept = torch.cumsum(squares, 0) / total  # kept energy of k = 1..n
    if energy is not None:
        reached = kept >= energy - 1e-12
    else:
        reached = (1 - kept).clamp_min(0).sqrt() <= max_error + 1e-12
    return int(torch.nonzero(reached)[0]) + 1 if bool(reached.any()) else s.numel()


def kept(s: torch.Tensor, k: int, rank_before: int) -> Kept:
    squares = s.double().square()
    total = float(squares.sum())
    if total == 0:
        return Kept(rank_before, k, 1.0, 0.0, 0.0)
    tail = float(squares[k:].sum())
    return Kept(rank_before, k, (total - tail) / total, (tail / total) ** 0.5, total)


def split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int, scale: float = 1.0):
    """(down, up), 2-D, of the rank-k truncation divided by `scale` (the pair's alpha/r that a loader
    multiplies back; a negative one flips up): up = U_k·√S_k, down = √S_k·V_kᵀ, so both factors share
    the magnitude (fp16-safe)."""
    root = (s[:k] / abs(scale)).clamp_min(0).sqrt()
    sign = -1.0 if scale < 0 else 1.0
    return (root[:, None] * vh[:k]).float(), (sign * u[:, :k] * root[None, :]).float()


def truncate(down: torch.Tensor, up: torch.Tensor, scale: float, new_scale: float, **choice):
    """The best approximation of scale·up@down of the rank `choose_rank(**choice)` picks, as a pair
    (down, up) for the scale `new_scale` (factors 2-D), and what it kept."""
    u, s, vh = product_svd(down, up)
    s = s * abs(scale)
    if scale < 0:
        u = -u
    k = choose_rank(s, **choice)
    new_down, new_up = split(u, s, vh, k, new_scale)
    return new_down, new_up, kept(s, k, down.shape[0])


def concatenate(pairs: list[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i scale_i·up_i@down_i of (down_i, up_i, scale_i) as one pair of rank Σ r_i, exactly (scale
    1): down = [A_1; A_2; ...], up = [scale_1·B_1, scale_2·B_2, ...]. Factors 2-D, fp64."""
    down = torch.cat([flat(d).double() for d, _, _ in pairs], 0)
    up = torch.cat([flat(u).double() * scale for _, u, scale in pairs], 1)
    return down, up
