"""The one way trilora makes images from a pipeline: training samples, the generation stopping
signal, DreamBooth class images, `generate`, `evaluate` and the toy world's scoring all call
`sample_images`.

Image k comes from the latent of a CPU generator seeded `seeds[k]`, so it is the same image whatever
the batch it is drawn in and whatever the device; the VAE and text encoder are moved to the device,
autocast is applied when asked, and the UNet's train/eval mode is what it was before.
"""

import torch

from trilora.formats.ldm import text_encoders

DEFAULT_BATCH = 8  # images per denoising batch


@torch.no_grad()
def sample_images(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    device: torch.device | None = None,
    autocast: torch.dtype | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> list:
    """PIL images, one per prompt; `guidance` None is the pipeline's default (7.5 for SD), `height`
    and `width` None the UNet's native size, `progress` the pipeline's per-step progress bar."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    unet_training = pipe.unet.training
    if device is not None:
        for model in (pipe.vae, *text_encoders(pipe)):
            model.to(device)
    device_type = (device or pipe.unet.device).type
    pipe.set_progress_bar_config(disable=not progress)
    options = {} if guidance is None else {"guidance_scale": guidance}
    images = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            generators = [
                torch.Generator("cpu").manual_seed(seed) for seed in seeds[start : start + batch_size]
            ]
            negative = None if negative_prompt is None else [negative_prompt] * len(chunk)
            with torch.autocast(device_type, autocast or torch.float32, enabled=autocast is not None):
                images += pipe(chunk, negative_prompt=negative, num_inference_steps=steps, height=height, width=width,
                               generator=generators, output_type="pil", **options).images  # fmt: skip
    finally:
        pipe.unet.train(unet_training)
    return images
