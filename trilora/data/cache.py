"""Encode once, train many times: VAE latents and (when the text encoders are frozen) prompt embeddings."""

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def encode_latents(
    vae: nn.Module, pixels: torch.Tensor, device: torch.device, batch_size: int = 8
) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]: (N, 3, H, W) -> (N, 4, H/f, W/f) on the CPU.

    We cache the mean of the VAE's posterior: its spread is tiny next to the diffusion noise, and a
    fixed latent per image makes the validation loss of two evaluations comparable.
    """
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(device, vae.dtype)
        out.append(((vae.encode(batch).latent_dist.mean - shift) * scaling).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_captions(encode: Callable[[list[str]], torch.Tensor], captions: list[str]) -> torch.Tensor:
    """Embeddings of each caption, computing each distinct caption once: `encode` maps a list of
    captions to their conditioning (the family's tokenize and encode). (N, ...) on the CPU."""
    unique = sorted(set(captions))
    embeddings = {}
    for start in range(0, len(unique), 32):
        chunk = unique[start : start + 32]
        for caption, embedding in zip(chunk, encode(chunk), strict=True):
            embeddings[caption] = embedding.float().cpu()
    return torch.stack([embeddings[c] for c in captions])
