import numpy as np
import pytest
import scipy.linalg
import torch

from trilora.toy.metrics import (
    attribute_accuracy,
    feature_statistics,
    frechet_distance,
    nfid,
    toy_fid,
)
from trilora.toy.world import Attributes


def features(seed: int, n: int = 500, dim: int = 32, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Correlated, non-Gaussian features (N, D), like a ReLU layer's."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
    return torch.relu(torch.randn(n, dim, generator=generator) @ mixing * scale + shift)


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """pytorch-fid's formula with scipy's sqrtm, the reference."""
    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def test_fid_of_a_feature_set_with_itself_is_zero():
    a = features(0)
    assert toy_fid(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("seed", "shift", "scale"), [(1, 0.0, 1.0), (2, 0.3, 1.0), (3, -0.2, 1.5), (4, 0.0, 0.5)]
)
def test_fid_matches_scipy_sqrtm(seed, shift, scale):
    a, b = features(0), features(seed, n=400, shift=shift, scale=scale)
    assert toy_fid(a, b) == pytest.approx(scipy_fid(a, b), abs=1e-3)


def test_fid_is_symmetric_and_positive_for_different_distributions():
    a, b = features(0), features(5, shift=0.5)
    forward, backward = toy_fid(a, b), toy_fid(b, a)
    assert forward > 0.1
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-9)


def test_fid_grows_as_distributions_move_apart():
    a = features(0)
    distances = [toy_fid(a, features(0) + shift) for shift in (0.0, 0.1, 0.5, 1.0)]
    assert distances == sorted(distances)
    # a pure shift of the mean adds exactly its squared length
    assert distances[2] == pytest.approx(0.5**2 * a.shape[1], rel=1e-6)


def test_frechet_distance_of_known_gaussians():
    # N(0, I) and N(m, 4I) in 3 dims: |m|² + 3 + 12 - 2 * tr(2I) = |m|² + 3
    m = torch.tensor([1.0, 2.0, 2.0])
    assert frechet_distance(torch.zeros(3), torch.eye(3), m, 4 * torch.eye(3)) == pytest.approx(9 + 3)


def test_feature_statistics_match_numpy():
    a = features(6, n=50, dim=8)
    mu, sigma = feature_statistics(a)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), a.double().numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(a.double().numpy(), rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(a[:1])


def test_nfid_of_the_base_model_is_one():
    assert nfid(12.5, 12.5) == 1.0
    assert nfid(5.0, 10.0) == 0.5
    with pytest.raises(ValueError, match="positive"):
        nfid(1.0, 0.0)


def test_attribute_accuracy_counts_each_attribute():
    wanted = [
        Attributes("gothic", "red", 3, "dusk"),
        Attributes("onion", "blue", 1, "night"),
        Attributes("modern", "white", 2, "day"),
        Attributes("pagoda", "green", 2, "day"),
    ]
    predicted = [
        Attributes("gothic", "red", 3, "dusk"),  # all right
        Attributes("pagoda", "blue", 1, "night"),  # style wrong
        Attributes("modern", "pink", 3, "day"),  # colour and floors wrong
        Attributes("pagoda", "green", 2, "dusk"),  # time wrong
    ]
    assert attribute_accuracy(predicted, wanted) == {
        "style": 0.75,
        "colour": 0.75,
        "floors": 0.75,
        "time": 0.75,
        "all": 0.25,
    }
    assert attribute_accuracy(wanted, wanted) == dict.fromkeys(
        ("style", "colour", "floors", "time", "all"), 1.0
    )
    with pytest.raises(ValueError, match="as many"):
        attribute_accuracy(predicted[:3], wanted)
