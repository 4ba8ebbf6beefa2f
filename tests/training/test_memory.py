"""`trilora train --dry-run`: counts and sizes against real models and real files, the activation
measurement's properties, and the report on full-size SD 1.5 built on the meta device."""

import shutil
import time

import pytest
import torch
import torch.nn.functional as F

from trilora.adapters.inject import add_adapters, text_encoder_targets, unet_conv_targets, unet_targets
from trilora.base.load import load_base, load_pipeline
from trilora.cli import main
from trilora.config import from_dict
from trilora.errors import UserError
from trilora.families.sd1 import CONFIGS as SD15_DIR
from trilora.formats.ldm import save_single_file, text_encoders
from trilora.training.activations import GpuLike, LiveBytes, training_step_bytes
from trilora.training.export import export_adapters
from trilora.training.memory import GIB, adapter_file_bytes, estimate_memory, format_report, meta_models


def run_config(tmp_path, base, adapter=None, **sections):
    settings = {"output": str(tmp_path / "run"), "model": {"base": str(base)},
                "data": {"data": str(tmp_path), "resolution": 32}, "adapter": adapter or {}, **sections}  # fmt: skip
    return from_dict(settings)


def trainable_shapes(*models) -> dict[str, tuple]:
    return {f"{i}.{name}": tuple(p.shape) for i, m in enumerate(models)
            for name, p in m.named_parameters() if p.requires_grad}  # fmt: skip


def add_real_adapters(pipe, method):
    """Adapters as `setup` adds them for rank 4, conv rank 2 (LoCon) and trained text encoder(s)."""
    add_adapters(pipe.unet, unet_targets(pipe.unet), method, 4, 4.0)
    add_adapters(pipe.unet, unet_conv_targets(pipe.unet), method, 2, 2.0)
    for text_encoder in text_encoders(pipe):
        add_adapters(text_encoder, text_encoder_targets(text_encoder), method, 4, 4.0)
    return pipe


@pytest.fixture(params=["sd1", "sdxl"])
def tiny_dir(request, tiny_model_dir, tiny_sdxl_dir):
    """A tiny model folder of each family that differs in its text encoders and kohya names."""
    return {"sd1": tiny_model_dir, "sdxl": tiny_sdxl_dir}[request.param]


def test_trainable_parameters_are_those_of_a_real_model(tmp_path, tiny_dir):
    for method in ("lora", "trilora"):
        adapter = {"method": method, "rank": 4, "conv_rank": 2, "train_text_encoder": True}
        meta = meta_models(run_config(tmp_path, tiny_dir, adapter))
        pipe = add_real_adapters(load_pipeline(tiny_dir), method)
        real = trainable_shapes(pipe.unet, *text_encoders(pipe))
        assert len(real) > 100 and trainable_shapes(meta.unet, *meta.text_encoders.values()) == real
        assert meta.unet.dtype == torch.bfloat16 and next(meta.unet.parameters()).is_meta


def test_adapter_file_size_is_that_of_an_exported_file(tmp_path, tiny_dir):
    adapter = {"method": "trilora", "rank": 4, "conv_rank": 2, "train_text_encoder": True}
    config = run_config(tmp_path, tiny_dir, adapter)
    meta = meta_models(config)
    base = load_base(tiny_dir)
    add_real_adapters(base.pipe, "trilora")
    files = export_adapters(base, config, tmp_path / "run", step=40, val_loss=0.0871, steps_run=60)
    estimate = adapter_file_bytes(meta, config)
    assert abs(files["kohya"].stat().st_size - estimate) < 64  # the step and loss values differ
    assert abs(files["diffusers"].stat().st_size - estimate) < 0.05 * estimate  # other names, no alphas


def test_live_bytes_counts_what_autograd_keeps_until_backward_frees_it():
    x = torch.empty(1000, device="meta", requires_grad=True)
    with LiveBytes() as meter:
        y = x.exp()  # exp keeps its output for backward
        z = y.sum()
        del y
        assert meter.live == 4000 + 4
        z.backward()
        del z
        assert meter.live == 4000  # x.grad
        a = torch.empty(10, device="meta")
        a.view(2, 5).add_(1)  # views and in-place ops take no new memory
        assert meter.live == 4040
    assert meter.peak >= 8004


def test_gpu_like_autocast_dtypes_and_flash_attention():
    x, w = torch.empty(4, 8, device="meta"), torch.empty(8, 8, device="meta")
    with GpuLike(torch.bfloat16):
        assert torch.is_autocast_enabled()  # the adapter layers ask
        assert F.linear(x, w).dtype == torch.bfloat16
        assert F.group_norm(x.to(torch.bfloat16).view(1, 4, 8), 2).dtype == torch.float32
    assert not torch.is_autocast_enabled("cuda")

    def attention_peak(mode) -> int:
        q = torch.empty(
            1, 8, 4096, 40, device="meta", dtype=torch.bfloat16, requires_grad=True
        )  # (B, heads, L, d)
        with LiveBytes() as meter, mode:
            F.scaled_dot_product_attention(q, q, q)
        return meter.peak

    scores = 8 * 4096 * 4096 * 2  # the (L, L) score matrices a math implementation keeps
    assert (
        attention_peak(GpuLike(torch.bfloat16)) < 2 * 8 * 4096 * 40 * 2 + 8 * 4096 * 4
    )  # output + logsumexp
    assert attention_peak(torch.no_grad()) > scores  # what plain meta attention would count


def test_checkpointing_saves_activations_and_they_grow_with_the_batch(tmp_path, tiny_model_dir):
    meta = meta_models(run_config(tmp_path, tiny_model_dir, {"method": "trilora", "rank": 4}))
    side = 32  # latents of 128 px images, 4x the tiny model's own size
    training = meta.unet.training

    def step(checkpointing, batch):
        return training_step_bytes(meta, side, True, checkpointing, False, batch)

    one, four = step(False, 1), step(False, 4)
    assert step(True, 1) < 0.7 * one
    assert 3.6 * one < four < 4.4 * one
    assert not meta.unet.is_gradient_checkpointing and meta.unet.training == training  # left as found


@pytest.mark.slow  # ~15 s on a 2-core CPU: two training steps, validation and the VAE of SD 1.5 on meta
def test_sd15_report_on_the_meta_device(tmp_path):
    """SD 1.5's real shapes from the shipped configs; no weights exist anywhere here."""
    # Per transformer block of width C, rank r: proj_in/out, attn1 q/k/v/out (C->C), attn2 q/out (C->C)
    # and k/v (768->C), GEGLU ff.net.0 (C->8C) and ff.net.2 (4C->C); a LoRA pair has r*(in+out).
    per_block = {
        c: 2 * 2 * c + 4 * 2 * c + 2 * 2 * c + 2 * (768 + c) + 9 * c + 5 * c for c in (320, 640, 1280)
    }
    blocks = {320: 2 + 3, 640: 2 + 3, 1280: 2 + 1 + 3}  # down, (mid), up blocks
    lora = 16 * sum(per_block[c] * n for c, n in blocks.items())
    assert lora == 6_782_976
    config = run_config(tmp_path, SD15_DIR, {"method": "lora", "rank": 16}, data={"data": str(tmp_path)})
    meta = meta_models(config)
    started = time.perf_counter()
    estimate = estimate_memory(meta, config)
    report = format_report(config, meta, estimate)
    print(f"SD 1.5 estimate in {time.perf_counter() - started:.1f} s:\n{report}")
    assert "trainable parameters: 6,782,976 (6.78 M)" in report and "192 UNet layers" in report
    # a 4x64x64 fp32 latent is 64 KiB, a 77x768 fp32 caption embedding 231 KiB; 8 validation timesteps of noise
    latent, embedding = 4 * 64 * 64 * 4, 77 * 768 * 4
    assert f"cache (not in the table): {(latent + embedding) / 2**20:.2f} MiB per training image, " in report
    assert f"{(9 * latent + embedding) / 2**20:.2f} MiB per validation image" in report
    assert estimate.base_weights == 859_520_964 * 2  # SD 1.5's UNet in bf16
    assert estimate.optimizer_state == 8 * lora and estimate.gradients == 4 * lora
    off, on = estimate.activations[False], estimate.activations[True]
    assert 0.5 * GIB < off < 4 * GIB and on < off / 2
    assert 2 * GIB < estimate.total(False) < 12 * GIB
    size_mib = adapter_file_bytes(meta, config) / 1024**2
    assert 2 * lora / 1024**2 < size_mib < 2 * lora / 1024**2 + 0.1  # fp16 pairs, alphas and a header
    trilora = meta_models(run_config(tmp_path, SD15_DIR, {"method": "trilora", "rank": 16}))
    assert sum(p.numel() for p in trilora.unet.parameters() if p.requires_grad) == lora + 192 * 16 * 16


def test_cli_dry_run_prints_the_report_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    output = tmp_path / "out"
    (tmp_path / "data").mkdir()
    common = [
        "train",
        "--dry-run",
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(output),
        "--resolution",
        "32",
    ]
    assert main([*common, "--base", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters:" in out and "adapter file:" in out and "peak total (nvidia-smi)" in out
    assert not output.exists()

    single = save_single_file(load_pipeline(tiny_model_dir), tmp_path / "tiny.safetensors")
    assert main([*common, "--base", str(single), "--base-config", str(tiny_model_dir)]) == 0
    assert "trainable parameters:" in capsys.readouterr().out
    assert main([*common, "--base", str(single)]) == 2  # the tiny file does not fit the SD 1.5 configs
    assert "does not fit the configuration" in capsys.readouterr().err
    (tmp_path / "not-a-model").mkdir()
    assert main([*common, "--base", str(tmp_path / "not-a-model")]) == 2
    assert "without model_index.json" in capsys.readouterr().err


def test_bad_config_folder_is_a_user_error(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(UserError, match="fits no model family"):
        meta_models(run_config(tmp_path, broken))
    shutil.copytree(tiny_model_dir, broken, dirs_exist_ok=True)
    (broken / "unet" / "config.json").write_text('{"block_out_channels": "wide"}')
    with pytest.raises(UserError, match="cannot build the model from the configs in"):
        meta_models(run_config(tmp_path, broken))
