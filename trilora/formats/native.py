"""trilora's own adapter file: the trainable factors as trained (TriLoRA keeps its three), for resuming.

Keys are `<part>.<module path>.down|mid|up` with part `unet`, `text_encoder` or `text_encoder_2`; metadata holds the
method, rank, alpha and the run's config as JSON. Not meant for other tools: export for those.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from trilora.adapters.math import fold
from trilora.errors import UserError
from trilora.files import save_safetensors


def save_adapter(path: Path, state: dict[str, torch.Tensor], metadata: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors(tensors, path, {"trilora_adapter": json.dumps(metadata)})


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), "pt") as f:
            metadata = json.loads((f.metadata() or {}).get("trilora_adapter", "null"))
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read adapter {path}: {error}") from None
    if metadata is None:
        raise UserError(f"{path} is not a trilora adapter checkpoint (no trilora_adapter metadata)")
    return state, metadata


def adapter_info(path: Path) -> dict | None:
    """The metadata of one of our adapter files (its step, scores, config) without its tensors; None
    if it is missing or not ours."""
    try:
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {}).get("trilora_adapter", "null"))
    except (OSError, SafetensorError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_native(path: Path) -> bool:
    """Whether `path` is one of our own adapter files (best/ and last/ of a run, checkpoints)."""
    try:
        with safe_open(str(path), "pt") as f:
            return "trilora_adapter" in (f.metadata() or {})
    except (OSError, SafetensorError):
        return False


def native_pairs(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
    """Our adapter file as LoRA pairs {`<part>.<module path>`: (down, up)} (TriLoRA's Sigma folded
    into up, exactly) and each pair's alpha: what `export` writes, from the file instead of a model."""

    state, metadata = load_adapter(path)
    modules = sorted(key.removesuffix(".down") for key in state if key.endswith(".down"))
    if not modules or any(f"{m}.up" not in state for m in modules):
        raise UserError(f"{path} is a trilora adapter file without whole adapters (down and up) in it")
    pairs = {m: fold(state[f"{m}.down"], state[f"{m}.up"], state.get(f"{m}.mid")) for m in modules}
    alpha = metadata.get("alpha", pairs[modules[0]][0].shape[0])
    conv_alpha = metadata.get("conv_alpha", alpha)
    alphas = {m: float(conv_alpha if is_kernel(down) else alpha) for m, (down, _) in pairs.items()}
    return pairs, alphas


def is_kernel(down: torch.Tensor) -> bool:
    """A LoCon 3x3-convolution adapter (its own alpha), not a 1x1 projection."""
    return down.ndim == 4 and down.shape[-1] * down.shape[-2] > 1
