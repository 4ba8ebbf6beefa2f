"""trilora's own adapter file: the trainable factors as trained (TriLoRA keeps its three), for resuming.

Keys are `<part>.<module path>.down|mid|up` with part `unet` or `text_encoder`; metadata holds the
method, rank, alpha and the run's config as JSON. Not meant for other tools: export for those.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

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
