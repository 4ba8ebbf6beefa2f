"""The optimiser over the adapter weights, with a learning-rate factor per model part."""

import torch

from trilora.adapters.inject import trainable_parameters
from trilora.config import RunConfig
from trilora.errors import UserError


def make_optimizer(config: RunConfig, models: dict[str, torch.nn.Module], device: torch.device):
    """AdamW (fused on CUDA), 8-bit AdamW (bitsandbytes) or Prodigy (prodigyopt).

    Each param group carries `lr_factor`: the loop sets lr = schedule(step) * lr_factor, so that
    --lr-text-encoder (and SDXL's --lr-text-encoder-2) follow the same schedule.
    """
    opts = config.train
    text = opts.lr if opts.lr_text_encoder is None else opts.lr_text_encoder
    part_lr = {
        "text_encoder": text,
        "text_encoder_2": text if opts.lr_text_encoder_2 is None else opts.lr_text_encoder_2,
    }
    groups = []
    for part, model in models.items():
        lr = part_lr.get(part, opts.lr)
        groups.append(
            {"params": trainable_parameters(model), "lr": lr, "lr_factor": lr / opts.lr, "name": part}
        )
    if opts.optimizer == "adamw":
        extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay, **extra)
    if opts.optimizer == "adamw8bit":
        try:  # an optional dependency
            import bitsandbytes
        except ImportError:
            raise UserError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bitsandbytes.optim.AdamW8bit(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    try:  # an optional dependency
        from prodigyopt import Prodigy
    except ImportError:
        raise UserError("--optimizer prodigy needs prodigyopt: pip install prodigyopt") from None
    return Prodigy(groups, lr=opts.lr, weight_decay=opts.weight_decay)  # Prodigy expects --lr 1
