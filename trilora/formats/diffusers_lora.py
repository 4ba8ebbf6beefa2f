"""The diffusers / PEFT LoRA layout: a folder that `pipe.load_lora_weights(folder)` loads.

`folder/pytorch_lora_weights.safetensors` holds, per adapted module,

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight      (r, in[, kh, kw])
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight      (out, r[, 1, 1])
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight            ...

The file has no alpha tensors: PEFT's scale alpha / r comes from the header key
`lora_adapter_metadata`, a JSON object of `LoraConfig` arguments per model, `{"unet.r": 4,
"unet.lora_alpha": 2.0, "unet.target_modules": [...], "text_encoder.r": ...}`, written as diffusers'
`LoraBaseMixin.write_lora_layers` writes it (diffusers/loaders/lora_base.py). Without it diffusers
assumes alpha = r.

Text-encoder keys keep transformers 4's `text_model.` level, like every diffusers SD LoRA published
so far: diffusers (0.42: `_load_lora_into_text_encoder`) strips it for the flat transformers-5
CLIPTextModel, diffusers with transformers 4 needs it. The target module names in the metadata
leave it out: PEFT matches them as suffixes, so they fit either CLIPTextModel.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PARTS = ("unet", "text_encoder")
TEXT_MODEL = "text_model."


def file_key(key: str) -> str:
    """`text_encoder.encoder.layers.0...` -> `text_encoder.text_model.encoder.layers.0...`; UNet keys as they are."""
    part, _, path = key.partition(".")
    if part not in PARTS:
        raise ValueError(f"adapter key {key!r} does not start with one of {PARTS}")
    if part == "text_encoder" and not path.startswith(TEXT_MODEL):
        path = TEXT_MODEL + path
    return f"{part}.{path}"


def save_diffusers(
    folder: str | Path,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    alpha: float,
    dtype: torch.dtype = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write LoRA pairs {`unet.<path>` | `text_encoder.<path>`: (down, up)} as a diffusers LoRA folder.

    `metadata` (e.g. `kohya_metadata(...)`) is added to the header for `trilora inspect` and model
    browsers; diffusers reads only its own key.
    """
    tensors, targets = {}, {part: [] for part in PARTS}
    for key, (down, up) in pairs.items():
        if down.shape[0] != rank:
            raise ValueError(f"{key}: rank {down.shape[0]}, expected {rank}")
        name = file_key(key)
        tensors[f"{name}.lora_A.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_B.weight"] = up.detach().to("cpu", dtype).contiguous()
        part, _, path = key.partition(".")
        targets[part].append(path.removeprefix(TEXT_MODEL))
    adapter_metadata = {}
    for part, modules in targets.items():
        if modules:  # a part without modules must have no entry: diffusers would build LoraConfig() from {}
            adapter_metadata |= {
                f"{part}.r": rank,
                f"{part}.lora_alpha": float(alpha),
                f"{part}.target_modules": sorted(modules),
            }
    header = {**(metadata or {}), "format": "pt"}
    header[ADAPTER_METADATA_KEY] = json.dumps(adapter_metadata, indent=2, sort_keys=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHT_NAME), metadata=header)
    return folder
