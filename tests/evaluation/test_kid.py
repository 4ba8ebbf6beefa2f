"""KID: the unbiased MMD² estimator against brute force and against an exactly known population value."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trilora.evaluation.kid import (
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
    subset_size_for,
)


def brute_force_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Bińkowski et al.'s U-statistic written with explicit loops over pairs."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 7), n=st.integers(2, 7), d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_mmd2_is_the_u_statistic(m, n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=generator, dtype=torch.float64)
    y = torch.randn(n, d, generator=generator, dtype=torch.float64) + 0.5
    assert mmd2_unbiased(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-9, abs=1e-9)


# Two distributions on a few points each, so that the population MMD² is an exact finite sum:
# MMD² = E k(x, x') + E k(y, y') - 2 E k(x, y) over independent draws (x = x' allowed).
SUPPORT_P = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
SUPPORT_Q = torch.tensor([[0.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
WEIGHTS_P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
WEIGHTS_Q = torch.tensor([0.6, 0.4], dtype=torch.float64)


def population_mmd2(sp, wp, sq, wq) -> float:
    return float(
        wp @ polynomial_kernel(sp, sp) @ wp
        + wq @ polynomial_kernel(sq, sq) @ wq
        - 2 * wp @ polynomial_kernel(sp, sq) @ wq
    )


def draw(support, weights, count, generator):
    return support[torch.multinomial(weights, count, replacement=True, generator=generator)]


@pytest.mark.parametrize("same", [True, False], ids=["same distribution", "different distributions"])
def test_kid_estimator_is_unbiased_on_a_known_case(same):
    sq, wq = (SUPPORT_P, WEIGHTS_P) if same else (SUPPORT_Q, WEIGHTS_Q)
    exact = population_mmd2(SUPPORT_P, WEIGHTS_P, sq, wq)
    assert (exact == pytest.approx(0, abs=1e-12)) if same else exact > 0.5
    generator = torch.Generator().manual_seed(0)
    unbiased, biased = [], []
    for _ in range(4000):
        x, y = draw(SUPPORT_P, WEIGHTS_P, 5, generator), draw(sq, wq, 5, generator)
        unbiased.append(mmd2_unbiased(x, y))
        kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))  # the V-statistic, with i = j
    unbiased, biased = torch.tensor(unbiased), torch.tensor(biased)
    standard_error = float(unbiased.std() / len(unbiased) ** 0.5)
    assert float(unbiased.mean()) == pytest.approx(exact, abs=4 * standard_error)
    # the test can tell: the biased estimator with 5 samples a side misses by far more
    assert abs(float(biased.mean()) - exact) > 10 * standard_error


def test_kid_over_subsets():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(20, 8, generator=generator, dtype=torch.float64) + 1
    mean, std = kernel_inception_distance(a, b, subsets=50, subset_size=10, seed=0)
    assert (mean, std) == kernel_inception_distance(a, b, subsets=50, subset_size=10, seed=0)
    assert mean > 0 and std > 0
    # a subset as large as the smaller set: that set whole, the larger one subsampled
    whole_mean, whole_std = kernel_inception_distance(a[:20], b, subsets=3, subset_size=1000)
    assert whole_mean == pytest.approx(mmd2_unbiased(a[:20], b), rel=1e-9) and whole_std < 1e-12
    # by default half the smaller set, so that subsets differ and their spread means something
    assert kernel_inception_distance(a[:20], b, subsets=3)[1] > 0
    assert [subset_size_for(*sizes) for sizes in [(30, 20), (5000, 3000), (3, 3)]] == [10, 1000, 2]
    assert subset_size_for(30, 20, requested=15) == 15 and subset_size_for(30, 20, requested=50) == 20
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(a[:1], b)
