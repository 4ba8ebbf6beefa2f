"""Which layers get adapters, putting adapters in and taking their weights out.

Module paths are those of the diffusers / transformers models (`down_blocks.0.attentions.0.proj_in`);
trilora.formats maps them to each file format's key names.
"""

import logging

import torch
from torch import nn

from trilora.adapters.layers import AdapterLayer

log = logging.getLogger("trilora")

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# kohya's UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 (sd-scripts networks/lora.py): the blocks LoCon adds.
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def unet_targets(unet: nn.Module) -> list[str]:
    """Every Linear and 1x1 conv inside the UNet's transformer blocks: to_q/k/v/out.0, ff, proj_in/out.

    This is the set kohya's sd-scripts trains for SD 1.x by default: 192 modules on SD 1.5.
    """
    names = []
    for block_name, block in unet.named_modules():
        if type(block).__name__ != "Transformer2DModel":
            continue
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) or (
                isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
            ):
                names.append(f"{block_name}.{name}")
    return names


def unet_conv_targets(unet: nn.Module) -> list[str]:
    """The 3x3 convs LoCon adapts: conv1/conv2 of every ResnetBlock2D and the Downsample2D/Upsample2D convs.

    50 modules on SD 1.5 (22 ResNet blocks, 3 downsamplers, 3 upsamplers); the UNet's own conv_in and
    conv_out are left out, as in kohya's sd-scripts. kohya's `conv_dim` also gives the same blocks'
    time_emb_proj (Linear) and conv_shortcut (1x1) adapters of the attention rank; those are not here.
    """
    names = []
    for block_name, block in unet.named_modules():
        if type(block).__name__ not in CONV_BLOCKS:
            continue
        for name, module in block.named_modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                names.append(f"{block_name}.{name}")
    return names


def text_encoder_targets(text_encoder: nn.Module) -> list[str]:
    """The CLIP encoder layers' attention projections and MLP: q/k/v/out_proj, fc1, fc2."""
    return [
        name
        for name, module in text_encoder.named_modules()
        if isinstance(module, nn.Linear)
        and ".encoder.layers." in f".{name}"
        and name.split(".")[-1] in TEXT_ENCODER_TARGETS
    ]


def add_adapters(
    model: nn.Module,
    names: list[str],
    method: str,
    rank: int,
    alpha: float,
    sigma: str = "svd",
    dropout: float = 0.0,
) -> dict[str, AdapterLayer]:
    """Replace each named layer by an AdapterLayer wrapping it.

    Freezes the whole model first but for the adapters already in it: a second call (LoCon's convs)
    must leave the first call's adapters trainable.
    """
    earlier = trainable_parameters(model)
    model.requires_grad_(False)
    for parameter in earlier:
        parameter.requires_grad_(True)
    layers = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = AdapterLayer(getattr(parent, child), method, rank, alpha, sigma, dropout)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


def with_part(part: str, state: dict) -> dict:
    """`{path: value}` of one model as `{"<part>.<path>": value}`, part `unet`, `text_encoder`, ...: the key
    scheme of checkpoints, trilora's adapter files and the pairs given to the formats."""
    return {f"{part}.{key}": value for key, value in state.items()}


def of_part(part: str, state: dict) -> dict:
    """The inverse of `with_part` for one part: its entries, with the `<part>.` prefix removed."""
    prefix = part + "."
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def add_run_adapters(
    unet: nn.Module, text_encoders: dict[str, nn.Module] | None, adapter, sigma: str | None = None
) -> None:
    """The adapters a run trains, as its `AdapterConfig` says, in this order (it fixes the random
    initialisation): the UNet's attention layers, LoCon's 3x3 convs (--conv-rank), each text encoder
    in `text_encoders`' order (--train-text-encoder; {part name: model}). `sigma` overrides
    --sigma-init (the --dry-run estimator's "identity")."""
    groups = [(unet, unet_targets(unet), adapter.rank, adapter.resolved_alpha, "--rank")]
    if adapter.conv_rank is not None:
        groups.append(
            (unet, unet_conv_targets(unet), adapter.conv_rank, adapter.resolved_conv_alpha, "--conv-rank")
        )
    if adapter.train_text_encoder:
        for model in (text_encoders or {}).values():
            groups.append(
                (model, text_encoder_targets(model), adapter.rank, adapter.resolved_alpha, "--rank")
            )
    for model, names, rank, _, flag in groups:
        warn_if_narrow(model, names, rank, flag)
    for model, names, rank, alpha, _ in groups:
        add_adapters(model, names, adapter.method, rank, alpha, sigma or adapter.sigma_init, adapter.dropout)


def warn_if_narrow(model: nn.Module, names: list[str], rank: int, flag: str) -> None:
    narrow = narrower_than(model, names, rank)
    if narrow:
        name, width = min(narrow.items(), key=lambda item: item[1])
        log.warning("%s %d is wider than %d of the %d target layers (the narrowest, %s, has rank %d): "
                    "their adapters cannot use the extra rank, and the file grows for nothing",
                    flag, rank, len(narrow), len(names), name, width)  # fmt: skip


def narrower_than(model: nn.Module, names: list[str], rank: int) -> dict[str, int]:
    """The named layers whose weight has rank below `rank` ({name: min(out, in*kh*kw)}): an adapter
    there cannot use all of its rank (TriLoRA's Sigma repeats the smallest singular value)."""
    widths = {}
    for name in names:
        weight = model.get_submodule(name).weight
        widths[name] = min(weight.shape[0], weight[0].numel())
    return {name: width for name, width in widths.items() if width < rank}


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The adapters in a model, by the path of the layer they wrap."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable factors (down, up and TriLoRA's mid), keyed `<path>.down` etc.: what a checkpoint keeps."""
    state = {}
    for name, layer in adapter_layers(model).items():
        state[f"{name}.down"] = layer.down.weight.detach().clone()
        state[f"{name}.up"] = layer.up.weight.detach().clone()
        if layer.mid is not None:
            state[f"{name}.mid"] = layer.mid.detach().clone()
    return state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    layers = adapter_layers(model)
    expected = {
        f"{n}.{part}"
        for n, layer in layers.items()
        for part in ("down", "up", "mid")[: 2 + (layer.mid is not None)]
    }
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"adapter state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            layer.down.weight.copy_(state[f"{name}.down"])
            layer.up.weight.copy_(state[f"{name}.up"])
            if layer.mid is not None:
                layer.mid.copy_(state[f"{name}.mid"])


def lora_pairs(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every adapter as a standard LoRA pair (down, up) with TriLoRA's Sigma folded into up."""
    pairs = {}
    for name, layer in adapter_layers(model).items():
        up = layer.up.weight.detach()
        if layer.mid is not None:
            up = (up.reshape(up.shape[0], -1) @ layer.mid.detach()).reshape(up.shape)
        pairs[name] = (layer.down.weight.detach().clone(), up.clone())
    return pairs


def set_multiplier(model: nn.Module, multiplier: float) -> None:
    for layer in adapter_layers(model).values():
        layer.multiplier = multiplier


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    layers = adapter_layers(model).values()
    return [p for layer in layers for p in (layer.down.weight, layer.up.weight, layer.mid) if p is not None]
