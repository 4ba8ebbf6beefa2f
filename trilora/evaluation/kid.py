"""Kernel Inception Distance (Bińkowski et al. 2018, https://arxiv.org/abs/1801.01401).

KID is the squared maximum mean discrepancy between two feature sets under the polynomial kernel

    k(x, y) = (x·y / d + 1)³

estimated without bias (the U-statistic: pairs of a set with itself exclude i = j). Unlike FID it has
no bias that depends on the number of images, so small sets - the few dozen images users have - give
numbers that compare across set sizes; it can be slightly negative when the sets match. As in the
paper and in torch-fidelity, it is averaged over random subsets, whose spread is reported too.
"""

import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x·y / d + 1)³ for rows x (N, D) and y (M, D): (N, M)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimate of MMD² between the distributions of x (M, D) and y (N, D), M, N >= 2."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples in each set; got {m} and {n}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def subset_size_for(n_a: int, n_b: int, requested: int | None = None) -> int:
    """Images per KID subset: `requested` capped at the smaller set, or by default min(1000, half of it).

    Subsets as large as a whole set would all be that set, with a spread of 0 that says nothing; half
    the images (down to 2) leaves the subsets different, so their spread shows the sampling noise
    (a little more of it than the full-set estimate has). 1000 is the paper's subset size.
    """
    smallest = min(n_a, n_b)
    size = min(requested, smallest) if requested is not None else min(1000, smallest // 2)
    return max(size, 2)


def kernel_inception_distance(
    features_a, features_b, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """KID between feature sets (N, D) and (M, D): (mean, standard deviation) over `subsets` subsets.

    Each subset draws subset_size_for(N, M, subset_size) rows of each set without replacement (with a
    fixed seed, so the same features give the same number). The deviation is over subsets (ddof 0,
    as torch-fidelity reports it).
    """
    a, b = torch.as_tensor(features_a, dtype=torch.float64), torch.as_tensor(features_b, dtype=torch.float64)
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"KID needs at least 2 images in each set; got {a.shape[0]} and {b.shape[0]}")
    size = subset_size_for(a.shape[0], b.shape[0], subset_size)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        rows_a = torch.randperm(a.shape[0], generator=generator)[:size]
        rows_b = torch.randperm(b.shape[0], generator=generator)[:size]
        values.append(mmd2_unbiased(a[rows_a], b[rows_b]))
    values = torch.tensor(values, dtype=torch.float64)
    return float(values.mean()), float(values.std(correction=0))
