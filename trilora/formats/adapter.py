"""Any adapter file as LoRA pairs, and LoRA pairs as files of both layouts: what the toolbox
(resize, merge, convert) reads and writes.

Read: a kohya file (SD 1.x/2.x names, or SDXL's SGM names), a diffusers LoRA folder or its
`pytorch_lora_weights.safetensors`, or trilora's own adapter file (a run's best/, last/,
adapters/step-N; TriLoRA's Σ folded into up, exactly). Pairs are keyed `<part>.<module path>` as
everywhere (trilora/formats/keys.py), factors as stored (dtype kept), one alpha per pair.

The family decides only SDXL's SGM names (and the header a trilora file is given): its header's
`ss_base_model_version`, else its names (`lora_te1_`/`lora_te2_`, `text_encoder_2.`, an SGM UNet
name, a second transformer block in a block: only SDXL has those), else unknown (SD 1.x and 2.x
files are written alike).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trilora.errors import UserError
from trilora.families.family import Family
from trilora.families.registry import FAMILIES, adapter_family
from trilora.formats.diffusers_lora import ADAPTER_METADATA_KEY, WEIGHT_NAME, module_value, save_diffusers
from trilora.formats.inspect import adapter_file
from trilora.formats.keys import our_key
from trilora.formats.kohya import SGM_UNET, read_kohya, save_kohya
from trilora.formats.metadata import kohya_metadata, read_safetensors
from trilora.formats.native import is_native, load_adapter, native_pairs

ALPHA_DTYPE_KEY = "trilora_kohya_alpha_dtype"  # a kohya file's alpha dtype, kept through the diffusers layout
DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
SECOND_BLOCK = re.compile(r"\.transformer_blocks\.[1-9]")


@dataclass
class Adapter:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # `<part>.<path>` -> (down, up)
    alphas: dict[str, float]
    metadata: dict[str, str]  # the header's (a trilora file: the kohya header its export would have)
    layout: str  # "kohya", "diffusers" or "trilora"
    family: Family | None
    file: Path  # the file read (a diffusers folder's weights file)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.pairs.values()))[0].dtype


def read_adapter(path: str | Path, unet_config_of) -> Adapter:
    """`unet_config_of(family)`: the UNet config SDXL's SGM names are read with. Pairs that do not pair
    (ranks differ, a 3-D factor, an up of a kernel) or hold NaN or inf are refused in one line."""
    adapter = _read(path, unet_config_of)
    for key, (down, up) in adapter.pairs.items():
        if (
            down.ndim not in (2, 4)
            or up.ndim != down.ndim
            or up.shape[1] != down.shape[0]
            or up.shape[2:].numel() != 1
        ):
            raise UserError(f"{path}: {key}'s down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair; "
                            "the file is damaged or not a LoRA (LyCORIS LoHa/LoKr are not read)")  # fmt: skip
        if down.numel() == 0 or not (down.isfinite().all() and up.isfinite().all()):
            raise UserError(f"{path}: {key} is empty or holds NaN or inf (a diverged training writes them): use an "
                            "earlier checkpoint")  # fmt: skip
        if not math.isfinite(adapter.alphas[key]):
            raise UserError(f"{path}: {key}'s alpha is {adapter.alphas[key]}; the file is damaged")
    return adapter


def _read(path: str | Path, unet_config_of) -> Adapter:
    file = adapter_file(path)
    if is_native(file):
        return _native(file)
    try:
        with safe_open(str(file), "pt") as opened:
            keys, metadata = list(opened.keys()), dict(opened.metadata() or {})
            alpha_dtypes = {opened.get_slice(k).get_dtype() for k in keys if k.endswith(".alpha")}
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read {path} as a safetensors file: {error}") from None
    if any(key.endswith(".lora_down.weight") for key in keys):
        family = adapter_family(metadata) or (FAMILIES["sdxl"] if any(
            key.startswith(("lora_te1_", "lora_te2_", *SGM_UNET)) for key in keys) else None)  # fmt: skip
        sgm = unet_config_of(family) if family is not None and family.kohya_sgm else None
        pairs, alphas, metadata = read_kohya(file, sgm)
        if len(alpha_dtypes) == 1:
            metadata[ALPHA_DTYPE_KEY] = alpha_dtypes.pop()
        return Adapter(pairs, alphas, metadata, "kohya", family, file)
    if any(key.endswith(".lora_A.weight") for key in keys):
        pairs, alphas, metadata = read_diffusers(file)
        family = adapter_family(metadata) or (FAMILIES["sdxl"] if any(
            key.startswith("text_encoder_2.") or SECOND_BLOCK.search(key) for key in pairs) else None)  # fmt: skip
        return Adapter(pairs, alphas, metadata, "diffusers", family, file)
    raise UserError(f"{path} holds no LoRA pairs (lora_down/lora_up, lora_A/lora_B or a trilora adapter's "
                    "down/up): give a LoRA file")  # fmt: skip


def read_diffusers(file: Path) -> tuple[dict, dict[str, float], dict[str, str]]:
    """(pairs, alpha per pair, header metadata) of a diffusers-layout LoRA file; alpha from its
    `lora_adapter_metadata` (rank and alpha patterns as PEFT reads them), else alpha = rank."""
    tensors, metadata = read_safetensors(file)
    try:
        adapter_metadata = json.loads(metadata.get(ADAPTER_METADATA_KEY) or "{}")
    except ValueError:
        raise UserError(
            f"{file}: its {ADAPTER_METADATA_KEY} header is not JSON; the file is damaged"
        ) from None
    pairs, alphas = {}, {}
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        up = tensors.get(f"{module}.lora_B.weight")
        if up is None:
            raise UserError(f"{file}: {module} has lora_A but no lora_B; the file is damaged")
        part, _, path = module.partition(".")
        if part not in ("unet", "text_encoder", "text_encoder_2"):
            raise UserError(f"{file}: {key} is not a Stable Diffusion LoRA key (unet., text_encoder., "
                            "text_encoder_2.)")  # fmt: skip
        ours = our_key(part, path)
        pairs[ours] = (tensors[key], up)
        alpha = module_value(
            adapter_metadata, part, path.removeprefix("text_model."), "lora_alpha", "alpha_pattern"
        )
        alphas[ours] = float(alpha) if alpha is not None else float(tensors[key].shape[0])
    return pairs, alphas, metadata


def _native(file: Path) -> Adapter:
    pairs, alphas = native_pairs(file)
    _, info = load_adapter(file)
    family = FAMILIES.get(info.get("family", "sd1"))
    if family is None:
        raise UserError(
            f"{file} names the model family {info.get('family')!r}, which this trilora does not know"
        )
    config = info.get("config") or {}
    metadata = kohya_metadata({"method": info.get("method", "lora"), "rank": info.get("rank", 0),
                               "alpha": info.get("alpha", 0), "config": config,
                               "best_step": info.get("step")},
                              family.header(info.get("prediction_type") or "epsilon"))  # fmt: skip
    return Adapter(pairs, alphas, metadata, "trilora", family, file)


def write_kohya(path: Path, adapter: Adapter, dtype: torch.dtype, sgm_config) -> Path:
    """`adapter` as one kohya file; `sgm_config`: SDXL's UNet config (SGM names), else None. An alpha
    dtype read from a kohya file is kept, so kohya → diffusers → kohya gives the same tensors."""
    metadata = {k: v for k, v in adapter.metadata.items() if k not in (ADAPTER_METADATA_KEY, ALPHA_DTYPE_KEY)}
    alpha_dtype = {v: k for k, v in DTYPE_NAMES.items()}.get(
        adapter.metadata.get(ALPHA_DTYPE_KEY), torch.float32
    )
    return save_kohya(path, adapter.pairs, adapter.alphas, metadata, dtype, sgm_config, alpha_dtype)


def write_diffusers(folder: Path, adapter: Adapter, dtype: torch.dtype) -> Path:
    """`adapter` as a diffusers LoRA folder (each pair's own rank and alpha, as patterns)."""
    metadata = {k: v for k, v in adapter.metadata.items() if k not in (ADAPTER_METADATA_KEY, "format")}
    save_diffusers(folder, adapter.pairs, None, adapter.alphas, dtype, metadata=metadata)
    return folder / WEIGHT_NAME
