"""What scores the generation stopping signal, chosen by the commands that train (train, compare,
demo, the toy bench) and handed to training: training imports neither the toy world nor evaluation.

- CLIP score (the TriLoRA paper's metric) against a local CLIP folder given by --clip-model, for real
  models: the same role as the judge, not measured by us on real models;
- the toy world's judge, when the base model is the toy world's and every prompt is a toy caption.
"""

import torch

from trilora.evaluation.clip_score import load_clip_scorer
from trilora.toy.signal import is_toy_world, toy_scorer
from trilora.training.signal import Scorer

TOY_GUIDANCE, CLIP_GUIDANCE = 3.0, 7.5  # the toy protocol's guidance; the paper's (§4.2)


def stopping_scorer(pipe, prompts: list[str], clip_model: str | None, device: torch.device) -> Scorer | None:
    """The scorer `--stop-on auto` uses for these held-out prompts, or None when there is none."""
    if clip_model:
        clip = load_clip_scorer(clip_model, device)
        score = lambda images, prompts: clip.scores(images, prompts).mean().item()  # noqa: E731
        return Scorer(score, f"CLIP score ({clip_model})", CLIP_GUIDANCE)
    if is_toy_world(pipe.unet) and (score := toy_scorer(prompts)) is not None:
        return Scorer(score, "the toy judge", TOY_GUIDANCE)
    return None
