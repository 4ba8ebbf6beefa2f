"""FID on Inception features and the choice of a recommended strength: pure functions.

FID's math lives in trilora/evaluation/fid.py, shared with the toy world, so both report one formula.
"""

from trilora.evaluation.fid import fid, nfid

__all__ = ["fid", "nfid", "recommend_strength"]


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
