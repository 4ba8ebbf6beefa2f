"""The GPU fast path's switches, each an option of the tree (`--compile`, `--cuda-graphs`,
`--channels-last`, `--cache-on-device` in setup.py);
bf16 frozen weights with fp32 adapters, fused AdamW and SDPA attention are always on where they apply."""

import logging

import torch
from torch.nn.attention import SDPBackend

log = logging.getLogger("trilora")


# Graphs dynamo keeps per compiled function before it runs the rest eager: its default, 8, is spent
# by SD 1.5's four block widths in training and validation; buckets multiply the shapes.
RECOMPILE_LIMIT = 256


def compile_blocks(unet: torch.nn.Module, cuda_graphs: bool = False, backend="inductor") -> int:
    """Regional compilation: each BasicTransformerBlock compiled in place (the UNet's repeated block;
    one graph per input shape, shared by the blocks of that shape, so buckets get one each).
    `cuda_graphs`: torch.compile's reduce-overhead mode, which replays each block's kernels as one
    CUDA graph (the loop marks each step's start). Returns how many were compiled."""
    # here, not at the top: diffusers (~3 s), which importing this module does not need
    from diffusers.models.attention import BasicTransformerBlock

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    for block in blocks:
        block.compile(dynamic=False, backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    return len(blocks)


KERNELS = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "memory-efficient", "CUDNN_ATTENTION": "cuDNN",
           "MATH": "math"}  # fmt: skip


def attention_backend(unet: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel torch's scaled_dot_product_attention runs for the UNet's first attention layer
    (its heads and head width, in the run's dtype), as torch's own dispatcher chooses it."""
    # here, not at the top: diffusers (~3 s), which importing this module does not need
    from diffusers.models.attention_processor import Attention

    attention = next((m for m in unet.modules() if isinstance(m, Attention)), None)
    if attention is None:
        return "none (no attention layers)"
    heads, width = attention.heads, attention.inner_dim // attention.heads
    q = torch.zeros(1, heads, 64, width, device=device, dtype=dtype)
    try:
        choice = SDPBackend(torch._fused_sdp_choice(q, q, q)).name  # what F.scaled_dot_product_attention runs
    except (AttributeError, RuntimeError, ValueError):  # an internal of torch: if it moves, say so
        return "SDPA (this torch does not say which kernel)"
    where = " (CPU)" if device.type == "cpu" else ""
    return f"SDPA {KERNELS.get(choice, choice.lower())} kernel{where} for {heads} heads of {width}"


def apply_fast_path(unet: torch.nn.Module, opts, device: torch.device, dtype: torch.dtype) -> None:
    if opts.channels_last:
        unet.to(memory_format=torch.channels_last)
    graphs = opts.cuda_graphs and device.type == "cuda"
    compiled = compile_blocks(unet, graphs) if opts.compile else 0
    if opts.cuda_graphs and not graphs:
        log.warning(
            "--cuda-graphs: CUDA graphs exist on CUDA only; the blocks on %s are compiled without", device
        )
    log.info("fast path: attention %s; %s; %s", attention_backend(unet, device, dtype),
             f"{compiled} transformer blocks compiled{' as CUDA graphs' if graphs else ''}" if opts.compile
             else "not compiled",
             "channels-last" if opts.channels_last else "channels-first")  # fmt: skip
