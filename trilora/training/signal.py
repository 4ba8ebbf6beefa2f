"""The generation stopping signal: held-out prompts sampled at each validation and scored (higher is
better). In the long toy bench (benchmarks/toy/long) it picked a checkpoint within 5 % of the best
one in more runs than any validation-loss rule, so `--stop-on auto` follows it wherever a scorer is
at hand. What scores is chosen by the command that trains (trilora/scorers.py: the toy world's
judge, or CLIP score with --clip-model) and handed in as a `FindScorer`.
Prompt k is sampled from the same seed at every validation, so two validations differ only by the adapter.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trilora.config import RunConfig
from trilora.errors import UserError
from trilora.sampling import sample_images
from trilora.seeds import derive_seed

log = logging.getLogger("trilora")

MAX_PROMPTS = 16  # the bench's count; the validation captions are cut to this many


@dataclass
class Scorer:
    score: Callable[[list, list[str]], float]  # (images, prompts) -> higher is better
    name: str  # what scores, for the log
    guidance: float  # the classifier-free guidance its images are sampled with


# (pipe, held-out prompts, --clip-model, device) -> the scorer for them, or None if there is none
FindScorer = Callable[[object, list[str], str | None, torch.device], Scorer | None]


@dataclass
class GenerationSignal:
    prompts: list[str]
    scorer: Scorer
    steps: int
    seeds: list[int]  # one per prompt

    def measure(
        self, pipe, resolution: int, device: torch.device, autocast: torch.dtype | None
    ) -> tuple[float, list]:
        """(the score, the images it scored: the contact sheet's column)."""
        images = sample_images(pipe, self.prompts, self.seeds, self.steps, self.scorer.guidance, resolution,
                               resolution, device=device, autocast=autocast)  # fmt: skip
        return float(self.scorer.score(images, self.prompts)), images


def generation_signal(
    config: RunConfig, pipe, val_captions: list[str], device: torch.device, find_scorer: FindScorer | None
):
    """(the signal stopping follows, GenerationSignal or None): `--stop-on auto` resolved with the
    scorer `find_scorer` finds (None: no scorer, as for a caller that hands none in)."""
    v = config.validation
    if v.stop_on not in ("auto", "generation"):
        return v.stop_on, None
    prompts = list(v.signal_prompt) or list(dict.fromkeys(val_captions))[:MAX_PROMPTS]
    seeds = [derive_seed(config.train.seed, "signal", k) for k in range(len(prompts))]
    if not prompts:  # no validation set and no --signal-prompt: nothing validates, nothing stops early
        if v.stop_on == "generation":
            raise UserError(
                "--stop-on generation needs held-out prompts: give --signal-prompt or a validation set"
            )
        return "val_loss", None
    scorer = find_scorer(pipe, prompts, v.clip_model, device) if find_scorer else None
    if scorer is None and v.stop_on == "generation":
        raise UserError("--stop-on generation needs a scorer: give --clip-model DIR (a local CLIP folder, e.g. "
                        "openai/clip-vit-large-patch14; the toy judge scores only the toy base with toy-world "
                        "prompts) or use --stop-on val_loss")  # fmt: skip
    if scorer is None:
        log.info("stopping on the validation loss (--stop-on auto: no scorer for the generation signal; "
                 "--clip-model DIR gives one)")  # fmt: skip
        return "val_loss", None
    log.info("stopping on the generation signal: %d held-out prompts scored by %s", len(prompts), scorer.name)
    return "generation", GenerationSignal(prompts, scorer, v.sample_steps, seeds)
