"""The adapter math as a specification: zero update at init, exact fold, merge = unmerged output."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trilora.adapters.layers import AdapterLayer
from trilora.adapters.math import delta_weight, fold, sigma_init, top_singular_values

dims = st.integers(min_value=1, max_value=12)


@settings(max_examples=40, deadline=None)
@given(out=dims, fan_in=dims, rank=dims, seed=st.integers(0, 2**16))
def test_fold_is_exact(out, fan_in, rank, seed):
    g = torch.Generator().manual_seed(seed)
    down, up, mid = (torch.randn(rank, fan_in, generator=g, dtype=torch.float64),
                     torch.randn(out, rank, generator=g, dtype=torch.float64),
                     torch.randn(rank, rank, generator=g, dtype=torch.float64))  # fmt: skip
    folded_down, folded_up = fold(down, up, mid)
    torch.testing.assert_close(folded_up @ folded_down, up @ mid @ down)
    torch.testing.assert_close(delta_weight(down, up, mid, 0.5), 0.5 * up @ mid @ down)


@settings(max_examples=30, deadline=None)
@given(out=dims, fan_in=dims, rank=dims)
def test_sigma_init_is_normalised_descending_singular_values(out, fan_in, rank):
    weight = torch.randn(out, fan_in, 3, 3)
    sigma = sigma_init(weight, rank)
    values = torch.diagonal(sigma)
    assert sigma.shape == (rank, rank)
    assert torch.count_nonzero(sigma - torch.diag(values)) == 0
    assert values[0] == 1.0
    assert torch.all(values[:-1] >= values[1:])
    expected = torch.linalg.svdvals(weight.reshape(out, -1))
    k = min(rank, expected.numel())
    torch.testing.assert_close(values[:k], expected[:k] / expected[0])


@pytest.mark.parametrize("shape", [(320, 320), (1280, 5120), (5120, 640), (320, 768)])
@pytest.mark.parametrize("rank", [4, 16, 64])
def test_top_singular_values_match_svdvals_within_the_stated_tolerance(shape, rank):
    """The randomised route (taken above 2 * (2r + 16) rows and columns) against svdvals: within 0.03
    of s_i/s_1 on Gaussian matrices (flat spectrum, the worst case), 1e-4 on a decaying spectrum."""
    g = torch.Generator().manual_seed(rank)
    flat_spectrum = torch.randn(*shape, generator=g) * 0.02
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g))
    decaying = u @ torch.diag(0.9 ** torch.arange(min(shape), dtype=torch.float32)) @ v.T
    for matrix, tolerance in ((flat_spectrum, 0.03), (decaying, 1e-4)):
        exact = torch.linalg.svdvals(matrix)[:rank]
        fast = top_singular_values(matrix, rank)
        assert fast.shape == (rank,)
        assert torch.all(fast[:-1] >= fast[1:])
        assert torch.all(fast <= exact * (1 + 1e-4))  # a range finder can only underestimate
        assert float((fast / fast[0] - exact / exact[0]).abs().max()) < tolerance


def test_top_singular_values_are_deterministic_and_leave_the_global_random_state_alone():
    matrix = torch.randn(400, 300, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    first = top_singular_values(matrix, 8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, top_singular_values(matrix, 8))


def layers():
    torch.manual_seed(0)
    return [nn.Linear(12, 10), nn.Conv2d(6, 8, 1), nn.Conv2d(6, 8, 3, stride=2, padding=1)]


def inputs(base):
    return torch.randn(2, 5, 12) if isinstance(base, nn.Linear) else torch.randn(2, 6, 9, 9)


def test_adapter_starts_exactly_at_the_base_model():
    for method in ("lora", "trilora"):
        for sigma in ("svd", "identity"):
            for base in layers():
                x = inputs(base)
                layer = AdapterLayer(base, method, rank=4, alpha=8, sigma=sigma)
                assert torch.equal(layer(x), base(x))
                assert torch.count_nonzero(layer.delta_weight()) == 0


def test_trilora_initialisation_follows_the_paper():
    base = nn.Linear(12, 10)
    layer = AdapterLayer(base, "trilora", rank=4, alpha=4)
    assert torch.count_nonzero(layer.down.weight) == 0  # V^T zero
    assert layer.up.weight.std() > 0  # U Gaussian
    torch.testing.assert_close(layer.mid.detach(), sigma_init(base.weight, 4))  # Sigma from the SVD
    identity = AdapterLayer(base, "trilora", rank=4, alpha=4, sigma="identity")
    assert torch.equal(identity.mid.detach(), torch.eye(4))


def test_merged_weight_gives_the_unmerged_output():
    for method in ("lora", "trilora"):
        for base in layers():
            layer = AdapterLayer(base, method, rank=3, alpha=6)
            with torch.no_grad():
                for p in (layer.down.weight, layer.up.weight):
                    p.normal_()
            x = inputs(base)
            merged = type(base)(**_kwargs(base))
            merged.load_state_dict({"weight": base.weight + layer.delta_weight(), "bias": base.bias})
            torch.testing.assert_close(merged(x), layer(x), atol=1e-4, rtol=1e-4)


def test_multiplier_scales_the_update_linearly():
    base = nn.Linear(12, 10)
    layer = AdapterLayer(base, "trilora", rank=3, alpha=3)
    with torch.no_grad():
        layer.down.weight.normal_()
    x = inputs(base)
    full = layer(x) - base(x)
    layer.multiplier = 0.5
    torch.testing.assert_close(layer(x) - base(x), 0.5 * full)
    layer.multiplier = 0.0
    assert torch.equal(layer(x), base(x))


def test_only_adapter_factors_get_gradients():
    base = nn.Conv2d(6, 8, 3, padding=1)
    layer = AdapterLayer(base, "trilora", rank=2, alpha=2)
    layer(inputs(base)).square().sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert layer.down.weight.grad.abs().sum() > 0  # A is zero but its gradient is not


def _kwargs(base):
    if isinstance(base, nn.Linear):
        return dict(in_features=base.in_features, out_features=base.out_features)
    return dict(in_channels=base.in_channels, out_channels=base.out_channels, kernel_size=base.kernel_size,
                stride=base.stride, padding=base.padding)  # fmt: skip
