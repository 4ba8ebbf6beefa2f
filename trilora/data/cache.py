"""Encode once, train many times: VAE latents and (when the text encoders are frozen) prompt embeddings."""

from collections.abc import Callable

import torch
from torch import nn

PIXEL_BUDGET = 8 * 512 * 512  # pixels the VAE encodes at once: 8 images at 512 px, 2 at 1024 px


def latent_batch(pixels_per_image: int) -> int:
    """How many images of this many pixels the VAE encodes at a time: its activations grow with the
    pixels (an fp32 SD/SDXL VAE holds ~20 GiB encoding 8 images of 1024 px, ~5 GiB for 2)."""
    return max(1, PIXEL_BUDGET // pixels_per_image)


@torch.no_grad()
def encode_latents(
    vae: nn.Module, pixels: torch.Tensor, device: torch.device, batch_size: int | None = None
) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]: (N, 3, H, W) -> (N, 4, H/f, W/f) on the CPU, `batch_size`
    images at a time (default: `latent_batch` of their size).

    We cache the mean of the VAE's posterior: its spread is tiny next to the diffusion noise, and a
    fixed latent per image makes the validation loss of two evaluations comparable.
    """
    batch_size = batch_size or latent_batch(pixels.shape[-2] * pixels.shape[-1])
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
