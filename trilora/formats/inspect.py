"""`trilora inspect FILE`: what an adapter file holds, read from its header and shapes only.

Recognises the kohya layout, the diffusers/PEFT layout (a file or its folder) and trilora's own
checkpoints; anything else with LoRA-looking names is reported as "unknown". Adapters of k x k
convolutions (LoCon's 3x3 convs, kohya's `conv_dim`) are reported apart: `rank`/`alpha` describe
the Linear and 1x1 modules, `conv` the others.
"""

import json
from collections import Counter
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import safe_open

from trilora.errors import UserError
from trilora.families.registry import adapter_family
from trilora.files import check_regular_file
from trilora.formats.diffusers_lora import ADAPTER_METADATA_KEY, WEIGHT_NAME, module_value
from trilora.formats.keys import our_key
from trilora.formats.kohya import PREFIXES, module_key

# The model part of each kohya prefix; te1/te2 are SDXL's two text encoders.
KOHYA_PARTS = {prefix: part for part, prefix in PREFIXES.items()}
KOHYA_PARTS |= {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
CHECKPOINT_METADATA_KEY = "trilora_adapter"  # header key of trilora.formats.native checkpoints
DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
MAX_VALUE_CHARS = 100


def describe(path: str | Path) -> dict:
    """Format, method, rank(s) and alpha(s) (k x k convs apart), module counts per part, dtype, metadata."""
    path = adapter_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            metadata = dict(f.metadata() or {})
            if _is_kohya(keys):
                found = _kohya(f, keys)
            elif any(key.endswith(".lora_A.weight") for key in keys):
                found = _diffusers(f, keys, metadata)
            elif CHECKPOINT_METADATA_KEY in metadata or any(key.endswith(".mid") for key in keys):
                found = _checkpoint(f, keys, metadata)
            elif any("lora" in key.lower() for key in keys):
                found = {"format": "unknown", "ranks": {}, "alphas": {}, "convs": set()}
            else:
                raise UserError(
                    f"{path} is not a LoRA file: none of its {len(keys)} tensor names is an adapter's"
                )
            weights = [key for key in keys if not key.endswith(".alpha")]  # alphas may differ (ours are fp32)
            dtype = f.get_slice(weights[0]).get_dtype() if weights else ""
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read {path} as a safetensors file: {error}") from None

    ranks, alphas, convs = found["ranks"], found["alphas"], found["convs"]  # per module key `<part>.<path>`
    modules = Counter(key.split(".", 1)[0] for key in ranks)
    conv_ranks = {key: ranks.pop(key) for key in convs}
    conv_alphas = {key: alphas.pop(key) for key in convs if key in alphas}
    trilora_method = metadata.get("trilora_method") or found.get("method")
    return {
        "file": str(path),
        "format": found["format"],
        "method": trilora_method or "lora (unknown trainer)",
        "trainer": f"trilora {metadata.get('trilora_version', '')}".strip() if trilora_method else None,
        **_rank_and_alpha(ranks, alphas),
        "modules": {
            "unet": modules.pop("unet", 0),
            "text_encoder": modules.pop("text_encoder", 0),
            **modules,
        },
        "conv": {"modules": len(conv_ranks), **_rank_and_alpha(conv_ranks, conv_alphas)} if convs else None,
        "dtype": DTYPE_NAMES.get(dtype, dtype),
        "family": str(family) if (family := adapter_family(metadata)) else None,
        "metadata": metadata,
    }


def _rank_and_alpha(ranks: dict, alphas: dict) -> dict:
    """rank and alpha where all modules share one (else None), and the sorted distinct values."""
    return {
        "rank": _single(ranks.values()),
        "ranks": sorted(set(ranks.values())),
        "alpha": _single(alphas.values()),
        "alphas": sorted(set(alphas.values())),
    }


def _single(values):
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _is_conv(shape: list[int]) -> bool:
    """A down factor of shape (r, in, kh, kw) with a kernel larger than 1x1."""
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def _is_kohya(keys: list[str]) -> bool:
    return (
        bool(keys)
        and all(key.startswith(tuple(KOHYA_PARTS)) for key in keys)
        and any(key.endswith(".lora_down.weight") for key in keys)
    )


def _kohya(f, keys: list[str]) -> dict:
    ranks, alphas, convs = {}, {}, set()
    for key in keys:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        prefix = next(prefix for prefix in KOHYA_PARTS if name.startswith(prefix))
        module = f"{KOHYA_PARTS[prefix]}.{name}"
        shape = f.get_slice(key).get_shape()
        ranks[module] = shape[0]
        if _is_conv(shape):
            convs.add(module)
        alpha_key = f"{name}.alpha"
        # kohya's convention for a module without alpha: alpha = rank (scale 1).
        alphas[module] = float(f.get_tensor(alpha_key).item()) if alpha_key in keys else float(ranks[module])
    return {"format": "kohya", "ranks": ranks, "alphas": alphas, "convs": convs}


def _diffusers(f, keys: list[str], metadata: dict[str, str]) -> dict:
    adapter_metadata = json.loads(metadata.get(ADAPTER_METADATA_KEY) or "{}")
    ranks, alphas, convs = {}, {}, set()
    for key in keys:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            part, _, path = module.partition(".")
            shape = f.get_slice(key).get_shape()
            ranks[module] = shape[0]
            if _is_conv(shape):
                convs.add(module)
            alpha = module_value(adapter_metadata, part, path, "lora_alpha", "alpha_pattern")
            if alpha is not None:  # without it diffusers loads the file with alpha = rank
                alphas[module] = float(alpha)
    return {"format": "diffusers-peft", "ranks": ranks, "alphas": alphas, "convs": convs}


def _checkpoint(f, keys: list[str], metadata: dict[str, str]) -> dict:
    info = json.loads(metadata.get(CHECKPOINT_METADATA_KEY) or "{}")
    shapes = {
        key.removesuffix(".down"): f.get_slice(key).get_shape() for key in keys if key.endswith(".down")
    }
    ranks = {module: shape[0] for module, shape in shapes.items()}
    convs = {module for module, shape in shapes.items() if _is_conv(shape)}
    alphas = {}
    if "alpha" in info:
        conv_alpha = info.get("conv_alpha", info["alpha"])
        alphas = {module: float(conv_alpha if module in convs else info["alpha"]) for module in ranks}
    method = info.get("method") or ("trilora" if any(key.endswith(".mid") for key in keys) else None)
    return {
        "format": "trilora checkpoint",
        "ranks": ranks,
        "alphas": alphas,
        "method": method,
        "convs": convs,
    }


def format_description(description: dict) -> str:
    """The description as aligned `field: value` lines, metadata last (long values shortened)."""
    d = description
    method = d["method"]
    if d["trainer"]:
        folded = d["method"] == "trilora" and d["format"] != "trilora checkpoint"
        method += f" (trained with {d['trainer']}{'; Sigma folded into lora_up' if folded else ''})"
    alpha = _join(d["alphas"]) or "not stored (loaders use alpha = rank)"
    if d["rank"] and d["alpha"] is not None:
        alpha += f" (scale alpha/rank = {d['alpha'] / d['rank']:g})"
    modules = ", ".join(f"{part.replace('_', ' ')} {count}" for part, count in d["modules"].items())
    lines = [
        f"file:     {d['file']}",
        f"format:   {d['format']}",
        f"method:   {method}",
        f"family:   {d['family'] or 'not stated (no ss_base_model_version a trilora family uses)'}",
        f"rank:     {_join(d['ranks']) or 'unknown'}",
        f"alpha:    {alpha}",
    ]
    if d["conv"]:
        conv = d["conv"]
        conv_alpha = _join(conv["alphas"]) or "not stored"
        if conv["rank"] and conv["alpha"] is not None:
            conv_alpha += f" (scale {conv['alpha'] / conv['rank']:g})"
        lines.append(
            f"conv:     rank {_join(conv['ranks'])}, alpha {conv_alpha}, {conv['modules']} modules (LoCon)"
        )
    lines += [
        f"modules:  {modules}",
        f"dtype:    {d['dtype']}",
        "metadata:" + ("" if d["metadata"] else " none"),
    ]
    for key, value in sorted(d["metadata"].items()):
        value = " ".join(value.split())
        if len(value) > MAX_VALUE_CHARS:
            value = value[: MAX_VALUE_CHARS - 3] + "..."
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _join(values) -> str:
    return ", ".join(f"{value:g}" for value in values)


def adapter_shapes(
    path: str | Path, unet_config=None
) -> tuple[dict[str, tuple[list[int], list[int]]], dict[str, str]]:
    """({module key `<part>.<path>`: (down shape, up shape)}, header metadata) of a kohya or
    diffusers-layout LoRA file, from its header only; other files give no shapes. SDXL's kohya
    (SGM) UNet names are read with `unet_config`, the UNet's they are to load into."""
    path = adapter_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            keys, metadata = list(f.keys()), dict(f.metadata() or {})
            if _is_kohya(keys):
                pairs = {key.removesuffix(".lora_down.weight"): (key, key.replace(".lora_down.", ".lora_up."))
                         for key in keys if key.endswith(".lora_down.weight")}  # fmt: skip
                modules = {module_key(name, unet_config): pair for name, pair in pairs.items()}
            else:
                modules = {key.removesuffix(".lora_A.weight"): (key, key.replace(".lora_A.", ".lora_B."))
                           for key in keys if key.endswith(".lora_A.weight")}  # fmt: skip
                modules = {_module_of_file_key(k): pair for k, pair in modules.items()}
            shapes = {module: (f.get_slice(down).get_shape(), f.get_slice(up).get_shape())
                      for module, (down, up) in modules.items() if up in keys}  # fmt: skip
    except ValueError as error:  # a module name of another model family (SDXL's input_blocks_ into SD)
        raise UserError(f"cannot load adapter {path}: {error}; it was made for another model family than this "
                        "base model's: use it with the base model it was trained for") from None  # fmt: skip
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read {path} as a safetensors file: {error}") from None
    return shapes, metadata


def adapter_file(path: str | Path) -> Path:
    """The adapter file itself: a diffusers LoRA folder's weights file, or the file, checked to be one."""
    path = Path(path)
    if path.is_dir() and (path / WEIGHT_NAME).is_file():
        path = path / WEIGHT_NAME
    check_regular_file(path, "adapter file")
    return path


def adapter_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of an adapter file (or a diffusers LoRA folder's file)."""
    path = adapter_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read {path} as a safetensors file: {error}") from None


def _module_of_file_key(key: str) -> str:
    part, _, module_path = key.partition(".")
    return our_key(part, module_path)
