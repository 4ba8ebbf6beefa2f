"""Training noise and timesteps keyed by each sample's global index.

Sample i of the run always gets the same noise and timestep, whatever the number of processes and
whether the run was interrupted and resumed: this is what makes resume exact and multi-process
runs equal to single-process ones.
"""

import torch

from trilora.seeds import derive_seed


def sample_generator(seed: int, sample_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, "noise", sample_index))


def training_noise(
    seed: int,
    sample_indices: list[int],
    shape: tuple[int, ...],
    num_train_timesteps: int,
    noise_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (B, C, h, w) and timesteps (B,) for the samples with these global indices (on the CPU).

    `noise_offset` adds a per-channel constant (Guttenberg 2023, "Diffusion with offset noise"),
    which lets the model learn very dark and very bright images.
    """
    noises, timesteps = [], []
    for index in sample_indices:
        generator = sample_generator(seed, index)
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=generator))
        noise = torch.randn(shape, generator=generator)
        if noise_offset:
            noise = noise + noise_offset * torch.randn((shape[0], 1, 1), generator=generator)
        noises.append(noise)
    return torch.stack(noises), torch.cat(timesteps)
