"""The denoising objective on latents (DDPM, Ho et al. 2020), pure functions."""

import torch
import torch.nn.functional as F


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, by the scheduler's `prediction_type`: the noise, or v (Salimans & Ho 2022)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def denoising_loss(
    denoise,
    unet,
    scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    condition: torch.Tensor,
    sizes: torch.Tensor,
) -> torch.Tensor:
    """Per-sample MSE between the UNet's prediction and the target: (B, C, H, W) -> (B,). `denoise`:
    the family's call of the UNet (`Family.denoise`), `sizes` each image's size conditioning (B, 6)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = denoise(unet, noisy, timesteps, condition, sizes)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy"): min(SNR, gamma) / SNR for epsilon prediction, and
    min(SNR, gamma) / (SNR + 1) for v prediction, whose loss already carries a factor SNR + 1.
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr
