"""Tiny stand-ins for the metric networks and the data of an evaluation, built from configs on the fly."""

import pytest
import torch
from tiny_networks import TINY_CLIP, random_inception
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from trilora.base.tiny import make_shapes_dataset
from trilora.families.sd1 import CONFIGS as SD15_DIR


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """A random-weight FID network saved like pt_inception-2015-12-05-6726825d.pth (a plain state dict)."""
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(random_inception().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP folder in the layout of openai/clip-vit-large-patch14 (model, tokenizer, processor)."""
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    torch.manual_seed(5)  # a seed whose random model scores the shapes' captions above 0
    CLIPModel(CLIPConfig(**TINY_CLIP)).save_pretrained(path)
    CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer").save_pretrained(path)
    processor_kwargs = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    try:  # transformers 5 without torchvision: the PIL processor writes the same preprocessor_config.json
        from transformers import CLIPImageProcessorPil

        CLIPImageProcessorPil(**processor_kwargs).save_pretrained(path)
    except ImportError:
        CLIPImageProcessor(**processor_kwargs).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
    """Eight 32-px images of coloured shapes with captions: the 'real images' and a captions folder."""
    return make_shapes_dataset(tmp_path_factory.mktemp("reference") / "shapes", count=8, seed=3)
