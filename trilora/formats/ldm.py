"""The original single-file layout of Stable Diffusion checkpoints: LDM/CompVis (SD 1.x, 2.x) and
its successor SGM (SDXL).

One `.safetensors`/`.ckpt` holds the UNet under `model.diffusion_model.*`, the VAE under
`first_stage_model.*` and the text encoder(s): SD 1.x's CLIP ViT-L under
`cond_stage_model.transformer.text_model.*`, SD 2.x's OpenCLIP ViT-H under `cond_stage_model.model.*`
(OpenCLIP's own names: `transformer.resblocks.N` with q, k and v fused into one `in_proj`, 24 blocks
of which SD 2.x uses the first 23); SDXL's CLIP ViT-L under `conditioner.embedders.0.transformer.`
and OpenCLIP ViT-bigG under `conditioner.embedders.1.model.` (its `text_projection` included). This module maps diffusers' parameter names to those names;
diffusers' single-file loader (`diffusers/loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`) is the
inverse. Block counts come from the model configs, so any SD-shaped model maps, the tiny test models
as well as SD 1.5 and SD 2.1.
"""

from pathlib import Path

import torch

from trilora.files import save_safetensors

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# Submodule names inside one block: diffusers name -> LDM name.
UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
SAME_NAMES: dict[str, str] = {}

# A module map is a list of (diffusers module, LDM module, submodule renames).
ModuleMap = list[tuple[str, str, dict[str, str]]]


def unet_module_map(config) -> ModuleMap:
    """Where each module of a `UNet2DConditionModel` with this config lives in an LDM UNet."""
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    modules: ModuleMap = [
        ("conv_in", "input_blocks.0.0", SAME_NAMES),
        ("time_embedding.linear_1", "time_embed.0", SAME_NAMES),
        ("time_embedding.linear_2", "time_embed.2", SAME_NAMES),
        ("mid_block.resnets.0", "middle_block.0", UNET_RESNET_NAMES),
        ("mid_block.attentions.0", "middle_block.1", SAME_NAMES),
        ("mid_block.resnets.1", "middle_block.2", UNET_RESNET_NAMES),
        ("conv_norm_out", "out.0", SAME_NAMES),
        ("conv_out", "out.2", SAME_NAMES),
    ]
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text and size embedding
        modules += [("add_embedding.linear_1", "label_emb.0.0", SAME_NAMES),
                    ("add_embedding.linear_2", "label_emb.0.2", SAME_NAMES)]  # fmt: skip
    # LDM numbers input_blocks flat: per level, `per_block` (resnet, attention) pairs and then a
    # downsampler, except after the last level; input_blocks.0 is conv_in.
    for level in range(levels):
        first = 1 + level * (per_block + 1)
        for layer in range(per_block):
            modules.append(
                (f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{first + layer}.0", UNET_RESNET_NAMES)
            )
            modules.append(
                (f"down_blocks.{level}.attentions.{layer}", f"input_blocks.{first + layer}.1", SAME_NAMES)
            )
        if level < levels - 1:
            modules.append(
                (
                    f"down_blocks.{level}.downsamplers.0.conv",
                    f"input_blocks.{first + per_block}.0.op",
                    SAME_NAMES,
                )
            )
    # output_blocks: per level, `per_block + 1` (resnet, attention) pairs; the upsampler sits in the
    # last one, after the attention if the level has one.
    for level, block_type in enumerate(config["up_block_types"]):
        first = level * (per_block + 1)
        for layer in range(per_block + 1):
            modules.append(
                (f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{first + layer}.0", UNET_RESNET_NAMES)
            )
            modules.append(
                (f"up_blocks.{level}.attentions.{layer}", f"output_blocks.{first + layer}.1", SAME_NAMES)
            )
        if level < levels - 1:
            slot = 2 if block_type.startswith("CrossAttn") else 1
            modules.append(
                (
                    f"up_blocks.{level}.upsamplers.0.conv",
                    f"output_blocks.{first + per_block}.{slot}.conv",
                    SAME_NAMES,
                )
            )
    return modules


def vae_module_map(config) -> ModuleMap:
    """Where each module of an `AutoencoderKL` with this config lives in an LDM autoencoder."""
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    modules: ModuleMap = [
        ("quant_conv", "quant_conv", SAME_NAMES),
        ("post_quant_conv", "post_quant_conv", SAME_NAMES),
    ]
    for part in ("encoder", "decoder"):
        modules += [
            (f"{part}.conv_in", f"{part}.conv_in", SAME_NAMES),
            (f"{part}.conv_norm_out", f"{part}.norm_out", SAME_NAMES),
            (f"{part}.conv_out", f"{part}.conv_out", SAME_NAMES),
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET_NAMES),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION_NAMES),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET_NAMES),
        ]
    for level in range(levels):
        for layer in range(per_block):
            modules.append(
                (
                    f"encoder.down_blocks.{level}.resnets.{layer}",
                    f"encoder.down.{level}.block.{layer}",
                    VAE_RESNET_NAMES,
                )
            )
        if level < levels - 1:
            modules.append(
                (
                    f"encoder.down_blocks.{level}.downsamplers.0.conv",
                    f"encoder.down.{level}.downsample.conv",
                    SAME_NAMES,
                )
            )
    # The LDM decoder numbers its levels from the lowest resolution up, diffusers from the top down.
    for level in range(levels):
        ldm_level = levels - 1 - level
        for layer in range(per_block + 1):
            modules.append(
                (
                    f"decoder.up_blocks.{level}.resnets.{layer}",
                    f"decoder.up.{ldm_level}.block.{layer}",
                    VAE_RESNET_NAMES,
                )
            )
        if level < levels - 1:
            modules.append(
                (
                    f"decoder.up_blocks.{level}.upsamplers.0.conv",
                    f"decoder.up.{ldm_level}.upsample.conv",
                    SAME_NAMES,
                )
            )
    return modules


def rename(key: str, modules: ModuleMap) -> str:
    """The LDM name of one diffusers parameter name, e.g. `conv_in.weight` -> `input_blocks.0.0.weight`."""
    for diffusers_module, ldm_module, submodule_names in modules:
        if key.startswith(diffusers_module + "."):
            submodule, _, param = key[len(diffusers_module) + 1 :].rpartition(".")
            submodule = submodule_names.get(submodule, submodule)
            return ".".join(part for part in (ldm_module, submodule, param) if part)
    raise ValueError(f"no LDM name for the diffusers parameter {key!r}: not an SD-shaped model")


def unet_ldm_module(path: str, config) -> str:
    """A UNet module's path in the original layout, e.g. SDXL's `down_blocks.1.attentions.0.proj_in`
    -> `input_blocks.4.1.proj_in`: kohya's SDXL LoRA names (`lora_unet_input_blocks_4_1_proj_in`)
    are these paths with `_` for `.`, the only SDXL names every loader reads."""
    return rename(path + ".weight", unet_module_map(config)).removesuffix(".weight")


def unet_diffusers_module(path: str, config) -> str:
    """The inverse of `unet_ldm_module`: `input_blocks.4.1.proj_in` -> `down_blocks.1.attentions.0.proj_in`."""
    for diffusers_module, ldm_module, submodule_names in unet_module_map(config):
        if path == ldm_module or path.startswith(ldm_module + "."):
            rest = path[len(ldm_module) + 1 :]
            rest = {ldm: ours for ours, ldm in submodule_names.items()}.get(rest, rest)
            return ".".join(part for part in (diffusers_module, rest) if part)
    raise ValueError(f"{path!r} is no module of this UNet's original layout")


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    modules = unet_module_map(config)
    return {UNET_PREFIX + rename(key, modules): tensor for key, tensor in state_dict.items()}


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    modules = vae_module_map(config)
    ldm = {}
    for key, tensor in state_dict.items():
        ldm_key = rename(key, modules)
        # LDM's VAE attention projections are 1x1 convs, diffusers' are Linear: (out, in) -> (out, in, 1, 1).
        if ".mid.attn_1." in ldm_key and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        ldm[VAE_PREFIX + ldm_key] = tensor
    return ldm


def text_encoder_to_ldm(
    state_dict: dict[str, torch.Tensor], prefix: str = TEXT_ENCODER_PREFIX
) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); older versions have it.
    return {prefix + key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}


# OpenCLIP's names inside one transformer block: diffusers (CLIPTextModel) name -> OpenCLIP name.
OPEN_CLIP_BLOCK_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
OPEN_CLIP_NAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def open_clip_to_ldm(
    state_dict: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """A diffusers CLIPTextModel(WithProjection) of an OpenCLIP encoder under OpenCLIP's names, q/k/v
    fused into `in_proj`.

    OpenCLIP applies its `text_projection` P as x·P, so the file holds the transpose of a
    CLIPTextModelWithProjection's Linear weight (SDXL's pooled vector comes from it). A CLIPTextModel
    (SD 2.x, which uses no projection) gets the identity: diffusers reads the matrix's first
    dimension as the width of the q/k/v split.
    """
    state_dict = {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}
    ldm = {}
    projection = state_dict.pop("text_projection.weight", None)
    for key, tensor in state_dict.items():
        if key in OPEN_CLIP_NAMES:
            ldm[OPEN_CLIP_NAMES[key]] = tensor
            continue
        layer, _, rest = key.removeprefix("encoder.layers.").partition(".")
        if not key.startswith("encoder.layers.") or not layer.isdigit():
            raise ValueError(f"no OpenCLIP name for the text encoder parameter {key!r}")
        block = f"transformer.resblocks.{layer}."
        module, _, param = rest.rpartition(".")
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module == "self_attn.q_proj":  # the three fused, in the order q, k, v
                parts = [state_dict[f"encoder.layers.{layer}.self_attn.{p}_proj.{param}"] for p in "qkv"]
                ldm[f"{block}attn.in_proj_{param}"] = torch.cat(parts)
            continue
        ldm[f"{block}{OPEN_CLIP_BLOCK_NAMES[module]}.{param}"] = tensor
    if projection is not None:
        ldm["text_projection"] = projection.T.contiguous()
    else:
        norm = ldm["ln_final.weight"]
        ldm["text_projection"] = torch.eye(norm.shape[0], device=norm.device, dtype=norm.dtype)
    return {prefix + key: tensor for key, tensor in ldm.items()}


def ldm_state_dict(unet, vae, text_encoder, text_to_ldm=text_encoder_to_ldm) -> dict[str, torch.Tensor]:
    """The three models' weights under their LDM single-file names (works on meta-device models too).

    `text_to_ldm`: the text encoder's layout, `text_encoder_to_ldm` (CLIP, SD 1.x) or
    `open_clip_to_ldm` (OpenCLIP, SD 2.x).
    """
    return {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_to_ldm(text_encoder.state_dict()),
    }


def sdxl_state_dict(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """SDXL's four models under their SGM single-file names (the UNet's as in `unet_to_ldm`, which
    adds SDXL's `label_emb`)."""
    return {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoder_to_ldm(text_encoder.state_dict(), SDXL_CLIP_PREFIX),
        **open_clip_to_ldm(text_encoder_2.state_dict(), SDXL_OPEN_CLIP_PREFIX),
    }


def text_encoders(pipe) -> list:
    """A pipeline's text encoders in order: `text_encoder`, and SDXL's `text_encoder_2`."""
    return [
        model for model in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if model is not None
    ]


def save_single_file(pipe, path: str | Path, layout=ldm_state_dict) -> Path:
    """Write a pipeline's unet, vae and text encoder(s) as one original-layout `.safetensors`;
    `layout` is the family's (`Family.ldm_state_dict`), SD 1.x's by default."""
    path = Path(path)
    state_dict = layout(pipe.unet, pipe.vae, *text_encoders(pipe))
    save_safetensors({key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}, path)
    return path
