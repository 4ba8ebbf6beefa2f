"""What a model family is: everything that differs between base models that trilora trains, in one
object, so that nothing outside `trilora/families/` knows a family.

A family module (sd1.py, sd2.py, sdxl.py) builds one `Family`. How captions become conditioning and how the
denoiser is called are the family's (`tokenize`, `encode`, `denoise`; SD 1.x and 2.x share one way,
in sd.py). Objectives (ε and v prediction today, flow matching for SD3/Flux later) are the
scheduler's `prediction_type`, read by training/losses.py.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str  # what --family takes and logs name: "sd1"
    title: str  # for people: "Stable Diffusion 1.x"
    pipeline: str  # the diffusers pipeline class, by name (importing diffusers takes seconds)
    configs: Path  # shipped diffusers-layout configs and tokenizer: what a single file loads with
    parts: tuple[str, ...]  # the pipeline's models that carry adapters: "unet", then its text encoder(s)
    default_resolution: Callable[[str], int]  # training resolution (px) by prediction type
    is_folder: Callable[[dict, dict], bool]  # (model_index.json, text_encoder/config.json) -> ours?
    is_file: Callable[[dict[str, tuple]], bool]  # a single file's tensor shapes -> ours?
    file_parts: tuple[tuple[str, str], ...]  # (what, key prefix) a single file must hold
    ldm_state_dict: Callable  # (unet, vae, *text encoders) -> weights under the single file's names
    header: Callable[[str], dict[str, str]]  # an export's ss_*/modelspec.* entries by prediction type
    tiny: Callable[[int], object]  # a tiny random-weight pipeline of this family (seed), for tests
    tokenize: Callable  # (pipe, captions) -> the token ids its text encoder(s) take
    encode: Callable  # (pipe, token ids) -> the denoiser's text conditioning (gradients flow if an encoder trains)
    denoise: Callable  # (unet, noisy latents, timesteps, conditioning, sizes (B, 6)) -> the UNet's prediction
    prediction_known: bool  # whether the shipped configs' prediction type holds for every file
    base_versions: tuple[str, ...]  # the ss_base_model_version values of this family's adapters
    bucket_step: int = 64  # aspect-ratio buckets' side step in pixels at real resolutions
    token_shape: tuple[int, ...] = (77,)  # the shape of one caption's token ids (`tokenize`'s rows)
    kohya_sgm: bool = False  # kohya files name UNet modules by the original (SGM) layout, te1/te2

    @property
    def text_encoders(self) -> tuple[str, ...]:
        """The pipeline's text encoders by attribute name, in order."""
        return self.parts[1:]

    def pipeline_class(self) -> type:
        return getattr(importlib.import_module("diffusers"), self.pipeline)

    def __str__(self) -> str:
        return f"{self.title} ({self.name})"
