"""The kohya-ss LoRA layout: what A1111, Forge, ComfyUI, InvokeAI and diffusers all load.

One `.safetensors` file; per adapted module, named after its diffusers / transformers path with
every `.` turned into `_`:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight  (r, in[, kh, kw])
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight    (out, r[, 1, 1])
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha             ()
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                  ...

The update is alpha / r * up @ down, r = lora_down's first dimension; rank and alpha are per module,
so LoCon's 3x3-conv adapters sit in the same file with their own (kohya's `conv_dim`/`conv_alpha`):

    lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight   (r_conv, in, 3, 3)
    lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight     (out, r_conv, 1, 1)
    lora_unet_down_blocks_0_resnets_0_conv1.alpha              ()

Text-encoder names keep the `text_model.` level of the transformers-4 CLIPTextModel: transformers 5
dropped it, the files of the ecosystem (and every loader's key tables) did not. diffusers' reader of
this layout is `_convert_non_diffusers_lora_to_diffusers` in diffusers/loaders/lora_conversion_utils.py.

SDXL files (`unet_config` given) name UNet modules by their path in the original (SGM) layout and
the two text encoders `lora_te1_`/`lora_te2_`, as kohya's sd-scripts writes them (sdxl_train_network):
the only SDXL names that ComfyUI, A1111/Forge, kohya's own tools and diffusers all read:

    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight
    lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight
"""

import json
from pathlib import Path

import torch

from trilora.errors import UserError
from trilora.files import save_safetensors
from trilora.formats.keys import file_path, our_key
from trilora.formats.ldm import unet_diffusers_module, unet_ldm_module
from trilora.formats.metadata import read_safetensors

# Pairs are keyed `<part>.<module path>`; each part has its own kohya prefix.
PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
SGM_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
SGM_UNET = tuple(f"lora_unet_{block}_" for block in ("input_blocks", "middle_block", "output_blocks", "label_emb",
                                                     "time_embed"))  # fmt: skip

# Path components that contain an underscore. Turning `_` back into `.` must keep these whole,
# so reading a kohya name needs the vocabulary of SD 1.x's UNet and CLIP module names.
UNDERSCORE_NAMES = (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "conv_in", "conv_out", "conv_norm_out", "conv_shortcut", "time_embedding",
    "time_emb_proj", "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
    "out_proj", "final_layer_norm", "layer_norm1", "layer_norm2", "text_projection",
    "input_blocks", "output_blocks", "middle_block", "label_emb", "time_embed", "in_layers", "out_layers",
    "emb_layers", "skip_connection",
)  # fmt: skip
_WORDS = sorted((tuple(name.split("_")) for name in UNDERSCORE_NAMES), key=len, reverse=True)


def kohya_name(key: str, unet_config=None) -> str:
    """`unet.down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`;
    with an SDXL `unet_config`, the SGM name `lora_unet_input_blocks_1_1_proj_in` (te1/te2)."""
    part, path = file_path(key)
    if unet_config is None:
        return PREFIXES[part] + path.replace(".", "_")
    if part == "unet":
        path = unet_ldm_module(path, unet_config)
    return SGM_PREFIXES[part] + path.replace(".", "_")


def is_sgm(name: str) -> bool:
    """Whether a kohya module name is of the SGM (SDXL) layout."""
    return name.startswith(("lora_te1_", "lora_te2_", *SGM_UNET))


def module_key(name: str, unet_config=None) -> str:
    """The inverse of `kohya_name`, back to our key (no `text_model.`); an SGM UNet name needs the
    UNet's config (a ValueError without it)."""
    if is_sgm(name):
        part, prefix = next((p, f) for p, f in SGM_PREFIXES.items() if name.startswith(f))
        path = _dotted(name.removeprefix(prefix))
        if part == "unet":
            if unet_config is None:
                raise ValueError(f"{name!r} is an SDXL (SGM) name: reading it needs the UNet's config")
            path = unet_diffusers_module(path, unet_config)
        return our_key(part, path)
    for part, prefix in PREFIXES.items():
        if name.startswith(prefix):
            return our_key(part, _dotted(name.removeprefix(prefix)))
    raise ValueError(f"{name!r} is not a kohya LoRA name (lora_unet_*, lora_te_*, lora_te1_*, lora_te2_*)")


def _dotted(name: str) -> str:
    tokens, parts, i = name.split("_"), [], 0
    while i < len(tokens):
        word = next((w for w in _WORDS if tuple(tokens[i : i + len(w)]) == w), (tokens[i],))
        parts.append("_".join(word))
        i += len(word)
    return ".".join(parts)


def save_kohya(
    path: str | Path,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    alpha: float | dict[str, float],
    metadata: dict[str, str],
    dtype: torch.dtype = torch.float16,
    unet_config=None,
    alpha_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write LoRA pairs {`unet.<path>` | `text_encoder.<path>`: (down, up)}; alpha one for all or per
    pair key; `unet_config` (SDXL's) for SGM names; `alpha_dtype`: fp32 (ours), or a converted
    file's own (kohya's sd-scripts stores alpha in its save dtype)."""
    path = Path(path)
    alphas = pair_alphas(pairs, alpha)
    tensors = {}
    for key, (down, up) in pairs.items():
        name = kohya_name(key, unet_config)
        tensors[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        # kohya casts alpha to the save dtype too; every loader reads it with .item(), and fp32
        # keeps an alpha such as 0.1 exact.
        tensors[f"{name}.alpha"] = torch.tensor(alphas[key], dtype=alpha_dtype)
    save_safetensors(tensors, path, dict(metadata))
    return path


def pair_alphas(pairs: dict, alpha: float | dict[str, float]) -> dict[str, float]:
    """Alpha per pair key from one alpha for all or a dict that must name every pair."""
    if not isinstance(alpha, dict):
        return dict.fromkeys(pairs, float(alpha))
    missing = sorted(set(pairs) - set(alpha))
    if missing:
        raise ValueError(f"no alpha for {len(missing)} adapter(s), e.g. {missing[0]!r}")
    return {key: float(alpha[key]) for key in pairs}


def conv_network_args(conv_rank: int, conv_alpha: float) -> dict[str, str]:
    """kohya's header record of LoCon: `ss_network_args`, the JSON of its `--network_args` (string values)."""
    return {"ss_network_args": json.dumps({"conv_dim": str(conv_rank), "conv_alpha": f"{conv_alpha:g}"})}


def read_kohya(
    path: str | Path, unet_config=None
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float], dict[str, str]]:
    """(pairs keyed like `save_kohya`'s input, alpha per module, header metadata); SGM (SDXL) names
    need the UNet's `unet_config`.

    A module without an `.alpha` gets alpha = r, as in kohya's own loader.
    """
    tensors, metadata = read_safetensors(path)
    names = {key.split(".", 1)[0] for key in tensors}
    if not names or not all(name.startswith((*PREFIXES.values(), *SGM_PREFIXES.values())) for name in names):
        raise UserError(
            f"{path} is not a kohya LoRA file: its keys do not all start with lora_unet_/lora_te_/lora_te1_/lora_te2_"
        )
    pairs, alphas = {}, {}
    for name in sorted(names):
        down, up = tensors.get(f"{name}.lora_down.weight"), tensors.get(f"{name}.lora_up.weight")
        if down is None or up is None:
            raise UserError(
                f"{path}: {name} has no lora_down/lora_up pair (a LyCORIS or other non-LoRA module?)"
            )
        key = module_key(name, unet_config)
        pairs[key] = (down, up)
        alpha = tensors.get(f"{name}.alpha")
        alphas[key] = float(alpha.item()) if alpha is not None else float(down.shape[0])
    return pairs, alphas, metadata
