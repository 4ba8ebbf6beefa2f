"""The Fréchet Inception Distance's math, and NFID: pure functions on feature tensors.

FID is the Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017,
https://arxiv.org/abs/1706.08500):

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½)

NFID divides a model's FID by its base model's FID against the same reference images, as in the
TriLoRA paper, so that 1 means "as far from the reference as the base model" and below 1 closer.
The features are Inception's for real models (`trilora evaluate`) and the toy judge's in the toy
world (its "toy FID"): one formula for both.
"""

import numpy as np
import torch


def _float64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).to(torch.float64)
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu (D,), sigma (D, D).

    tr((Σ₁Σ₂)^½) is computed as the sum of the square roots of the eigenvalues of Σ₁^½ Σ₂ Σ₁^½,
    which is symmetric and has the eigenvalues of Σ₁Σ₂; in float64, with no scipy needed.
    """
    mu1, sigma1, mu2, sigma2 = (_float64(x) for x in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(
            f"means must be vectors of one length; got {tuple(mu1.shape)} and {tuple(mu2.shape)}"
        )
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"covariances must be ({dim}, {dim}); got {tuple(sigma1.shape)} and {tuple(sigma2.shape)}"
        )
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)  # rounding can leave -1e-12 for identical statistics


def feature_statistics(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64, as pytorch-fid computes them."""
    features = _float64(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2; got {tuple(features.shape)}")
    mu = features.mean(dim=0)
    centred = features - mu
    sigma = centred.T @ centred / (features.shape[0] - 1)
    return mu, sigma


def fid(features_a, features_b) -> float:
    """FID between feature sets (N, D) and (M, D): Inception features (or the toy judge's) of generated and reference images."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def nfid(fid_model: float, fid_base: float) -> float:
    """Normalised FID: a model's FID over its base model's FID against the same reference images."""
    if fid_base <= 0:
        raise ValueError(f"the base model's FID must be positive to normalise by it; got {fid_base}")
    return fid_model / fid_base
