"""Activation memory of training, validation and the VAE, measured by running them on meta tensors.

Meta tensors have shapes and dtypes but no data, so SD 1.5 at 512 px runs in seconds on a CPU and
allocates nothing. While a phase runs, `LiveBytes` adds up the bytes of every storage an op creates
and subtracts them when Python or autograd lets go of it: the peak is what the phase holds on a GPU
beyond the weights, including the tensors autograd saves for backward and, with gradient
checkpointing, the block that backward recomputes. Weights and inputs made before the measurement
are not counted.

Two things a GPU does differently from the meta device are emulated by `GpuLike`, a torch-function
mode: bf16 autocast (convolutions and matmuls in bf16; norms, softmax and the loss in fp32: torch's
CUDA autocast lists, for the ops SD 1.x's UNet and CLIP use), and attention, which on meta
decomposes into the math path that keeps every (tokens x tokens) score matrix; it runs as flash
attention instead, which keeps the output and its logsumexp, as SDPA does on a GPU.
"""

import contextlib
import weakref
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from trilora.adapters.inject import trainable_parameters


def training_step_bytes(
    models,
    side: int,
    bf16: bool,
    checkpointing: bool,
    train_text_encoder: bool,
    batch: int = 1,
) -> int:
    """Peak bytes of one training step (text encoders when trained, UNet, loss, backward) on `batch`
    latents of side x side, the adapter weights' gradients left out. `models`: the run's
    `MetaModels` (unet, text_encoders by part name, family)."""
    unet, texts = models.unet, list(models.text_encoders.values())
    params = [p for m in (unet, *texts) for p in trainable_parameters(m)]
    was_checkpointing, modes = unet.is_gradient_checkpointing, [m.training for m in (unet, *texts)]
    gpu = GpuLike(torch.bfloat16 if bf16 else None)
    if checkpointing:
        unet.enable_gradient_checkpointing(gpu.checkpoint)
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    for model in texts:
        model.train(train_text_encoder)
    with torch.no_grad():
        cached = None if train_text_encoder else meta_condition(models, batch)  # encoded before training
    meter = LiveBytes()
    hooks = [p.register_post_accumulate_grad_hook(lambda p: meter.leave_out(p.grad)) for p in params]
    try:
        with meter:
            with gpu:
                latents = torch.empty(
                    batch, unet.config.in_channels, side, side, device="meta"
                )  # (B, C, h, w)
                noise = torch.empty_like(latents)
                timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
                condition = meta_condition(models, batch) if cached is None else torch.empty_like(cached)
                sizes = torch.zeros(batch, 6, device="meta")
                prediction = models.family.denoise(unet, latents, timesteps, condition, sizes)
                losses = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
                del latents, noise, condition, prediction
            losses.sum().backward()
            del losses
    finally:
        for hook in hooks:
            hook.remove()
        for p in params:
            p.grad = None
        if was_checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        for model, mode in zip((unet, *texts), modes, strict=True):
            model.train(mode)
    return meter.peak


def meta_condition(models, batch: int) -> torch.Tensor:
    """The family's text conditioning of `batch` captions on the meta device (through the text
    encoders, with gradients if their adapters train)."""
    ids = torch.zeros(batch, *models.family.token_shape, dtype=torch.long, device="meta")
    return models.family.encode(SimpleNamespace(**models.text_encoders), ids)


def inference_bytes(models, side: int, bf16: bool, batch: int) -> int:
    """Peak bytes of a UNet forward pass without gradients on `batch` latents (validation)."""
    unet = models.unet
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            cached = meta_condition(models, 1)
        with torch.no_grad(), LiveBytes() as meter, GpuLike(torch.bfloat16 if bf16 else None):
            latents = torch.empty(batch, unet.config.in_channels, side, side, device="meta")  # (B, C, h, w)
            condition = torch.empty(batch, *cached.shape[1:], device="meta")
            timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
            sizes = torch.zeros(batch, 6, device="meta")
            models.family.denoise(unet, latents, timesteps, condition, sizes)
    finally:
        unet.train(was_training)
    return meter.peak


def vae_bytes(vae: nn.Module, resolution: int, bf16: bool, decode: bool, batch: int = 1) -> int:
    """Peak bytes of the VAE encoding `batch` images of resolution x resolution px, or decoding them."""
    with torch.no_grad(), LiveBytes() as meter, GpuLike(torch.bfloat16 if bf16 else None):
        if decode:
            side, channels = latent_size(vae, resolution), vae.config.latent_channels
            vae.decode(torch.empty(batch, channels, side, side, device="meta"))
        else:
            vae.encode(torch.empty(batch, vae.config.in_channels, resolution, resolution, device="meta"))
    return meter.peak


def latent_size(vae: nn.Module, resolution: int) -> int:
    """Side of the square latent: the VAE halves the image once per encoder block but the last (8 for SD)."""
    return resolution // 2 ** (len(vae.config.block_out_channels) - 1)


class MetaScalars(TorchDispatchMode):
    """Reading a number out of a meta tensor (TriLoRA's init reads a norm) gives 1: only shapes matter here."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return True if args[0].dtype is torch.bool else 1.0 if args[0].is_floating_point() else 1
        return func(*args, **(kwargs or {}))


class LiveBytes(MetaScalars):
    """The peak, over the ops run under it, of the bytes of the storages they created that are still alive.

    A storage's Python object lives exactly as long as the storage (PyTorch keeps it while autograd
    or a view holds the storage), so a finalizer on it says when the memory would be freed.
    """

    def __init__(self):
        super().__init__()
        self.live, self.peak = 0, 0
        self.sizes: dict[int, int] = {}  # id(storage) -> bytes, for the storages counted in `live`

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        # An output in the storage of an input (a view, an in-place op) takes no new memory.
        inputs = {id(t.untyped_storage()) for t in tensors_in(args, kwargs)}
        for tensor in tensors_in(out if isinstance(out, (tuple, list)) else (out,)):
            storage = tensor.untyped_storage()
            if id(storage) not in self.sizes and id(storage) not in inputs:
                self.sizes[id(storage)] = storage.nbytes()
                self.live += storage.nbytes()
                weakref.finalize(storage, self.release, id(storage))
        self.peak = max(self.peak, self.live)
        return out

    def release(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def leave_out(self, tensor: torch.Tensor) -> None:
        """Stop counting a tensor that is accounted for elsewhere (a weight's gradient)."""
        self.release(id(tensor.untyped_storage()))


# What CUDA autocast runs in bf16 and in fp32 (torch's "Autocast Op Reference"), where SD uses it.
LOWER_PRECISION = {F.linear, F.conv1d, F.conv2d, F.conv3d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
                   torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.Tensor.baddbmm,
                   torch.addmm, torch.Tensor.addmm}  # fmt: skip
FULL_PRECISION = {F.group_norm, F.layer_norm, F.softmax, F.log_softmax, torch.softmax, torch.Tensor.softmax,
                  torch.log_softmax, torch.Tensor.log_softmax, F.mse_loss, torch.exp, torch.Tensor.exp,
                  torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.sum, torch.Tensor.sum, torch.rsqrt,
                  torch.Tensor.rsqrt, torch.norm, torch.Tensor.norm, F.normalize}  # fmt: skip


class GpuLike(TorchFunctionMode):
    """Run as a GPU would: CUDA autocast's dtypes (when `autocast` is a dtype) and flash attention."""

    def __init__(self, autocast: torch.dtype | None):
        super().__init__()
        self.autocast = autocast
        self.outer = []  # CUDA autocast flags to restore, one per __enter__

    def __enter__(self):
        # Autocast itself never applies to meta tensors; the flag only tells code that asks
        # torch.is_autocast_enabled() (the adapter layers) to take its autocast path.
        self.outer.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
        if self.autocast is not None:
            torch.set_autocast_enabled("cuda", True)
            torch.set_autocast_dtype("cuda", self.autocast)
        return super().__enter__()

    def __exit__(self, *exc):
        enabled, dtype = self.outer.pop()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", dtype)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        if self.autocast is not None and func in LOWER_PRECISION:
            args, kwargs = cast((args, kwargs), self.autocast)
        elif self.autocast is not None and func in FULL_PRECISION:
            args, kwargs = cast((args, kwargs), torch.float32)
        return func(*args, **kwargs)

    def checkpoint(self, module: nn.Module, *args):
        """diffusers' gradient checkpointing, whose recomputation in backward runs outside this mode's
        `with` block: the recomputation gets a GpuLike of its own."""
        contexts = lambda: (contextlib.nullcontext(), GpuLike(self.autocast))  # noqa: E731
        return torch.utils.checkpoint.checkpoint(
            module.__call__, *args, use_reentrant=False, context_fn=contexts
        )

    def attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        if self.autocast is not None:
            query, key, value = cast((query, key, value), self.autocast)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(query.dtype)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )[0]


def tensors_in(args, kwargs=None) -> list[torch.Tensor]:
    """The tensors among an op's arguments or results, and in their lists (torch.cat's)."""
    found = []
    for value in (*args, *(kwargs or {}).values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


def cast(tree, dtype: torch.dtype):
    """Every floating-point tensor in `tree` in `dtype` (autocast's casts)."""
    return tree_map(
        lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x, tree
    )
