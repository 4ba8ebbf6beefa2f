"""What an exported file says about itself: the safetensors header's string-to-string metadata.

kohya's `ss_*` keys and Stability AI's `modelspec.*` keys are what model browsers (A1111's
"metadata" tab, ComfyUI, Civitai) read; `trilora_*` keys record what those cannot: the method the
adapter was trained with (the file itself is a plain LoRA, TriLoRA's Sigma folded in), where
validation stopped it, and the run's whole config.
"""

import json
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from trilora.errors import UserError

NETWORK_MODULE = "networks.lora"  # what kohya's sd-scripts writes for a LoRA (its `networks/lora.py`)
# sd-scripts' sai_model_spec: SD 1.x/2.x LoRAs are "diffusers"; SDXL's family header names its own
IMPLEMENTATION = "diffusers"
SAI_MODEL_SPEC = "1.0.0"


def kohya_metadata(info: dict, family_header: dict[str, str]) -> dict[str, str]:
    """Header metadata of an exported adapter.

    `info` keys: method, rank, alpha, and where known sigma_init, best_step, best_val_loss, name,
    steps, started_at (unix time), date (ISO 8601), base_model and config (the run's config dict).
    `family_header`: what the model family says of itself (`Family.header`): ss_base_model_version,
    ss_v2, modelspec.architecture and the prediction type, which A1111 and model browsers read.
    """
    config = info.get("config") or {}
    date = info.get("date") or datetime.now(UTC).replace(microsecond=0).isoformat()
    name = info.get("name")
    metadata = {
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(int(info["rank"])),
        "ss_network_alpha": str(float(info["alpha"])),
        "ss_base_model_version": family_header["ss_base_model_version"],
        "ss_v2": family_header["ss_v2"],
        "ss_training_started_at": _text(info.get("started_at")),
        "ss_output_name": _text(name),
        "ss_steps": _text(info.get("steps")),
        "ss_sd_model_name": _text(info.get("base_model")),
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.architecture": family_header["modelspec.architecture"],
        "modelspec.implementation": family_header.get("modelspec.implementation", IMPLEMENTATION),
        "modelspec.title": name or f"{info['method']}@{date}",
        "modelspec.date": date,
        "trilora_method": str(info["method"]),
        "trilora_sigma_init": _text(info.get("sigma_init")),
        "trilora_best_step": _text(info.get("best_step")),
        "trilora_best_val_loss": _text(info.get("best_val_loss")),
        "trilora_version": version("trilora"),  # the installed distribution's
        "trilora_config": json.dumps(config, sort_keys=True),
    }
    metadata |= {key: value for key, value in family_header.items() if key not in metadata}
    resolution = config.get("data", {}).get("resolution")
    if resolution:
        metadata["modelspec.resolution"] = f"{resolution}x{resolution}"
    return {key: value for key, value in metadata.items() if value is not None}


def renamed(metadata: dict[str, str], old: str, new: str, config: dict | None) -> dict[str, str]:
    """An exported file's metadata after its run was renamed from `old` to `new`: the titles that
    named the run name the new one; `config`, when given, is the run's config with its new paths."""
    metadata = dict(metadata)
    for key in ("ss_output_name", "modelspec.title"):
        if metadata.get(key) == old:
            metadata[key] = new
    if config is not None and "trilora_config" in metadata:
        metadata["trilora_config"] = json.dumps(config, sort_keys=True)
    return metadata


def _text(value) -> str | None:
    """A metadata value, or None (the key is left out) when it is not known."""
    return None if value is None or value == "" else str(value)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the header metadata of a safetensors file."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read {path} as a safetensors file: {error}") from None
