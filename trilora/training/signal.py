"""The generation stopping signal: held-out prompts sampled at each validation and scored (higher is
better). In the long toy bench (benchmarks/toy/long) it picked a checkpoint within 5 % of the best
one in more runs than any validation-loss rule, so `--stop-on auto` follows it wherever a scorer is
at hand:
- the toy world's judge, when the base model is the toy world's and every prompt is a toy caption:
  the share of images with style, colour, floors and time all as asked (the bench's signal);
- CLIP score (the TriLoRA paper's metric) against a local CLIP folder given by --clip-model, for
  real models: the same role, not measured by us on real models.
Prompt k is sampled from the same seed at every validation, so two validations differ only by the adapter.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trilora.config import RunConfig
from trilora.errors import UserError
from trilora.seeds import derive_seed

log = logging.getLogger("trilora")

MAX_PROMPTS = 16  # the bench's count; the validation captions are cut to this many
TOY_GUIDANCE, CLIP_GUIDANCE = 3.0, 7.5  # the toy protocol's guidance; the paper's (§4.2)


@dataclass
class GenerationSignal:
    prompts: list[str]
    score: Callable[[list, list[str]], float]  # (images, prompts) -> higher is better
    scorer: str  # what scores, for the log
    guidance: float
    steps: int
    seeds: list[int]  # one per prompt

    @torch.no_grad()
    def measure(self, pipe, resolution: int, device: torch.device, autocast: torch.dtype | None) -> float:
        unet_training = pipe.unet.training
        pipe.vae.to(device)
        pipe.text_encoder.to(device)
        pipe.set_progress_bar_config(disable=True)
        images = []
        for start in range(0, len(self.prompts), 8):
            chunk = self.prompts[start : start + 8]
            generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds[start : start + 8]]
            with torch.autocast(device.type, autocast or torch.float32, enabled=autocast is not None):
                images += pipe(chunk, num_inference_steps=self.steps, guidance_scale=self.guidance, height=resolution,
                               width=resolution, generator=generators, output_type="pil").images  # fmt: skip
        pipe.unet.train(unet_training)
        return float(self.score(images, self.prompts))


def is_toy_world(unet) -> bool:
    """Whether a UNet has the toy world's architecture (its images are what the judge reads)."""
    from trilora.toy.base import TOY_UNET

    def plain(value):
        return list(value) if isinstance(value, tuple | list) else value

    return all(plain(unet.config.get(key)) == plain(value) for key, value in TOY_UNET.items())


def toy_scorer(prompts: list[str]) -> Callable | None:
    """The judge's share of images with every attribute as asked; None if a prompt is not a toy caption."""
    from trilora.toy.judge import load_judge
    from trilora.toy.metrics import attribute_accuracy
    from trilora.toy.world import parse_caption

    try:
        wanted = [parse_caption(p) for p in prompts]
    except ValueError:
        return None
    judge = load_judge()
    return lambda images, _: attribute_accuracy(judge.predict(images), wanted)["all"]


def clip_scorer(path: str, device: torch.device) -> Callable:
    from trilora.evaluation.clip_score import load_clip_scorer

    clip = load_clip_scorer(path, device)
    return lambda images, prompts: clip.scores(images, prompts).mean().item()


def generation_signal(config: RunConfig, pipe, val_captions: list[str], device: torch.device):
    """(the signal stopping follows, GenerationSignal or None): `--stop-on auto` resolved."""
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
    if v.clip_model:
        score, scorer, guidance = (
            clip_scorer(v.clip_model, device),
            f"CLIP score ({v.clip_model})",
            CLIP_GUIDANCE,
        )
    elif is_toy_world(pipe.unet) and prompts and (score := toy_scorer(prompts)) is not None:
        scorer, guidance = "the toy judge", TOY_GUIDANCE
    elif v.stop_on == "generation":
        raise UserError("--stop-on generation needs a scorer: give --clip-model DIR (a local CLIP folder, e.g. "
                        "openai/clip-vit-large-patch14; the toy judge scores only the toy base with toy-world "
                        "prompts) or use --stop-on val_loss")  # fmt: skip
    else:
        log.info("stopping on the validation loss (--stop-on auto: no scorer for the generation signal; "
                 "--clip-model DIR gives one)")  # fmt: skip
        return "val_loss", None
    log.info("stopping on the generation signal: %d held-out prompts scored by %s", len(prompts), scorer)
    return "generation", GenerationSignal(prompts, score, scorer, guidance, v.sample_steps, seeds)
