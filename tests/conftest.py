"""Fixtures shared across test folders. Keep each one small and named for what it gives."""

import pytest
import torch

from trilora.base.tiny import save_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny random-weight SD-shaped model (seed 0) as a diffusers folder, saved once per session.

    Shared by every test: treat it as read-only, copy it before changing anything in it.
    """
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_model") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny random-weight SDXL pipeline as a diffusers folder."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "model", seed=0, family="sdxl")


@pytest.fixture(scope="session")
def lora_file(tiny_model_dir, tmp_path_factory):
    """A TriLoRA adapter for the tiny model (kohya file) with random weights strong enough to change images."""
    from trilora.adapters.inject import adapter_layers, add_adapters, lora_pairs, unet_targets
    from trilora.base.load import load_pipeline
    from trilora.formats.kohya import save_kohya

    pipe = load_pipeline(tiny_model_dir)
    add_adapters(pipe.unet, unet_targets(pipe.unet), "trilora", 4, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in adapter_layers(pipe.unet).values():
            layer.down.weight.normal_(std=0.3)
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_kohya(path, {f"unet.{k}": v for k, v in lora_pairs(pipe.unet).items()}, 4.0, {}, torch.float32)
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the toy world's end-to-end runs are fastest so on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
