"""The GPU fast path's switches, each an option of the tree (`--compile`, `--cuda-graphs`,
`--channels-last`, `--cache-on-device` in setup.py);
bf16 frozen weights with fp32 adapters, fused AdamW and SDPA attention are always on where they apply."""

import logging

import torch

log = logging.getLogger("trilora")


# Graphs dynamo keeps per compiled function before it runs the rest eager: its default, 8, is spent
# by SD 1.5's four block widths in training and validation; buckets multiply the shapes.
RECOMPILE_LIMIT = 256


def compile_blocks(unet: torch.nn.Module, cuda_graphs: bool = False, backend="inductor") -> int:
    """Regional compilation: each BasicTransformerBlock compiled in place (the UNet's repeated block;
    one graph per input shape, shared by the blocks of that shape, so buckets get one each).
    `cuda_graphs`: torch.compile's reduce-overhead mode, which replays each block's kernels as one
    CUDA graph (the loop marks each step's start). Returns how many were compiled."""
    from diffusers.models.attention import BasicTransformerBlock

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    for block in blocks:
        block.compile(dynamic=False, backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    return len(blocks)


def attention_backend(device: torch.device) -> str:
    """Which attention kernel family torch's scaled_dot_product_attention may choose here."""
    if device.type != "cuda":
        return "SDPA (math/CPU kernels)"
    enabled = [name for name, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
               ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
               ("math", torch.backends.cuda.math_sdp_enabled())) if on]  # fmt: skip
    return "SDPA (" + ", ".join(enabled) + ")"


def apply_fast_path(unet: torch.nn.Module, opts, device: torch.device) -> None:
    if opts.channels_last:
        unet.to(memory_format=torch.channels_last)
    graphs = opts.cuda_graphs and device.type == "cuda"
    compiled = compile_blocks(unet, graphs) if opts.compile else 0
    if opts.cuda_graphs and not graphs:
        log.warning(
            "--cuda-graphs: CUDA graphs exist on CUDA only; the blocks on %s are compiled without", device
        )
    log.info("fast path: attention %s; %s; %s", attention_backend(device),
             f"{compiled} transformer blocks compiled{' as CUDA graphs' if graphs else ''}" if opts.compile
             else "not compiled",
             "channels-last" if opts.channels_last else "channels-first")  # fmt: skip
