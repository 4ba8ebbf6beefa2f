"""FID on Inception features: zero for a set with itself, equal to scipy's sqrtm route; the recommended strength."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from tiny_networks import random_inception

from trilora.base.tiny import make_shapes_dataset
from trilora.evaluation.inception import inception_features
from trilora.evaluation.metrics import fid, recommend_strength


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    """Inception features (N, 2048) of two sets of 12 synthetic images from the random-weight network."""
    model = random_inception(input_size=139)
    sets = []
    for seed in (0, 1):
        folder = make_shapes_dataset(tmp_path_factory.mktemp(f"shapes{seed}"), count=12, size=48, seed=seed)
        images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
        if seed == 1:
            images = [image.rotate(90) for image in images]
        sets.append(inception_features(model, images, batch_size=12))
    return sets


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """pytorch-fid's formula with scipy.linalg.sqrtm, on the features expressed in an orthonormal basis of
    their span: FID is invariant to rotations, and the basis makes the matrices 24x24 instead of 2048x2048."""
    a, b = a.numpy(), b.numpy()
    basis = scipy.linalg.orth(np.concatenate([a, b]).T)  # (2048, r), r <= 24
    a, b = a @ basis, b @ basis
    mu1, mu2 = a.mean(0), b.mean(0)
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real)


def test_fid_of_a_set_with_itself_is_zero(feature_sets):
    a, _ = feature_sets
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6 * float(a.var(0).sum()))


def test_fid_matches_scipy_sqrtm(feature_sets):
    a, b = feature_sets
    ours = fid(a, b)
    assert ours > 0.1
    assert ours == pytest.approx(scipy_fid(a, b), abs=1e-3)


def test_recommended_strength_examples():
    # (strength, FID, CLIP score): stronger is closer to the style but follows the prompt less
    points = [(0.0, 80.0, 31.0), (0.25, 60.0, 30.8), (0.5, 50.0, 30.2), (0.75, 45.0, 29.5), (1.0, 44.0, 27.0)]
    assert recommend_strength(points, clip_tolerance=1.0) == 0.5
    assert recommend_strength(points, clip_tolerance=0.0) == 0.0
    assert recommend_strength(points, clip_tolerance=100.0) == 1.0
    tied = [(1.0, 5.0, 20.0), (0.5, 5.0, 20.0)]
    assert recommend_strength(tied, 0.0) == 0.5  # FID ties: the lower strength


@given(
    st.lists(
        st.tuples(st.floats(0, 2), st.floats(0, 500), st.floats(0, 40)),
        min_size=1,
        max_size=8,
        unique_by=lambda p: p[0],
    ),
    st.floats(0, 10),
)
def test_recommended_strength_properties(points, tolerance):
    chosen = recommend_strength(points, tolerance)
    best_clip = max(c for _, _, c in points)
    _, chosen_fid, chosen_clip = next(p for p in points if p[0] == chosen)
    assert chosen_clip >= best_clip - tolerance
    assert all(f >= chosen_fid for _, f, c in points if c >= best_clip - tolerance)
