"""FID on Inception features and the choice of a recommended strength: pure functions.

FID is the Fréchet distance of Gaussians fitted to two feature sets (Heusel et al. 2017); the
distance itself, its float64 eigenvalue route and NFID live in trilora.toy.metrics and are shared
with the toy world, so that both report one formula.
"""

from trilora.toy.metrics import feature_statistics, frechet_distance, nfid

__all__ = ["fid", "nfid", "recommend_strength"]


def fid(features_a, features_b) -> float:
    """FID between feature sets (N, D) and (M, D), e.g. Inception features of generated and real images."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def recommend_strength(points: list[tuple[float, float, float]], clip_tolerance: float) -> float:
    """The strength with the lowest FID among those whose CLIP score is within `clip_tolerance` of the best.

    `points` are (strength, FID, CLIP score). A lower FID means images closer to the reference set (the
    adapter's style); the CLIP-score condition keeps strengths that still follow the prompt. Ties in
    FID go to the lower strength.
    """
    if not points:
        raise ValueError("no strengths to choose from")
    if clip_tolerance < 0:
        raise ValueError(f"the CLIP-score tolerance must be >= 0; got {clip_tolerance}")
    best_clip = max(clip for _, _, clip in points)
    eligible = [
        (fid_value, strength) for strength, fid_value, clip in points if clip >= best_clip - clip_tolerance
    ]
    return min(eligible)[1]
