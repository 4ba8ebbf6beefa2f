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

Modules of another rank or alpha than their part's most common one (LoCon's 3x3 convs,
`unet.down_blocks.0.resnets.0.conv1.lora_A.weight` of shape (r_conv, in, 3, 3)) are listed in
`"unet.rank_pattern"` / `"unet.alpha_pattern"`, `{module path: value}`: diffusers passes the
metadata to `LoraConfig` as it is (`_create_lora_config`), and PEFT gives a module the value of the
first pattern that matches the end of its path (`peft.utils.other.get_pattern_key`).

Text-encoder keys keep transformers 4's `text_model.` level, like every diffusers SD LoRA published
so far: diffusers (0.42: `_load_lora_into_text_encoder`) strips it for the flat transformers-5
CLIPTextModel, diffusers with transformers 4 needs it. The target module names in the metadata
leave it out: PEFT matches them as suffixes, so they fit either CLIPTextModel.
"""

import json
import re
from collections import Counter
from pathlib import Path

import torch

from trilora.files import save_safetensors
from trilora.formats.keys import PARTS, TEXT_MODEL, file_path
from trilora.formats.kohya import pair_alphas

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def file_key(key: str) -> str:
    """`text_encoder.encoder.layers.0...` -> `text_encoder.text_model.encoder.layers.0...`; UNet keys as they are."""
    part, path = file_path(key)
    return f"{part}.{path}"


def save_diffusers(
    folder: str | Path,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int | None,
    alpha: float | dict[str, float],
    dtype: torch.dtype = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write LoRA pairs {`unet.<path>` | `text_encoder.<path>`: (down, up)} as a diffusers LoRA folder.

    `rank`: the rank every pair must have, or None to take each pair's own (LoCon). `alpha`: one for
    all, or per pair key. `metadata` (e.g. `kohya_metadata(...)`) is added to the header for
    `trilora inspect` and model browsers; diffusers reads only its own key.
    """
    alphas = pair_alphas(pairs, alpha)
    tensors, ranks = {}, {part: {} for part in PARTS}
    part_alphas = {part: {} for part in PARTS}
    for key, (down, up) in pairs.items():
        if rank is not None and down.shape[0] != rank:
            raise ValueError(f"{key}: rank {down.shape[0]}, expected {rank}")
        name = file_key(key)
        tensors[f"{name}.lora_A.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_B.weight"] = up.detach().to("cpu", dtype).contiguous()
        part, path = file_path(key)
        path = path.removeprefix(TEXT_MODEL)  # the LoraConfig's rank and alpha patterns omit it
        ranks[part][path], part_alphas[part][path] = down.shape[0], alphas[key]
    adapter_metadata = {}
    for part in PARTS:
        # a part without modules must have no entry: diffusers would build LoraConfig() from {}
        if ranks[part]:
            adapter_metadata |= {f"{part}.target_modules": sorted(ranks[part])}
            adapter_metadata |= _with_patterns(part, "r", "rank_pattern", ranks[part])
            adapter_metadata |= _with_patterns(part, "lora_alpha", "alpha_pattern", part_alphas[part])
    header = {**(metadata or {}), "format": "pt"}
    header[ADAPTER_METADATA_KEY] = json.dumps(adapter_metadata, indent=2, sort_keys=True)
    folder = Path(folder)
    save_safetensors(tensors, folder / WEIGHT_NAME, header)
    return folder


def _with_patterns(part: str, field: str, pattern_field: str, values: dict[str, float]) -> dict:
    """`{part.field: most common value}`, plus `{part.pattern_field: {path: value}}` for the others."""
    common = Counter(values.values()).most_common(1)[0][0]
    entries = {f"{part}.{field}": common}
    others = {path: value for path, value in sorted(values.items()) if value != common}
    if others:
        entries[f"{part}.{pattern_field}"] = others
    return entries


def module_value(adapter_metadata: dict, part: str, path: str, field: str, pattern_field: str):
    """The r or lora_alpha PEFT gives module `path` of `part` from the metadata; None if not stored.

    As `peft.utils.other.get_pattern_key`: the first pattern that matches the end of the path.
    """
    for pattern, value in adapter_metadata.get(f"{part}.{pattern_field}", {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return adapter_metadata.get(f"{part}.{field}")
