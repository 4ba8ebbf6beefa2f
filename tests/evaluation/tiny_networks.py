"""Random-weight metric networks of the real architectures, small or fast enough for tests."""

import torch
from torch import nn

from trilora.evaluation.inception import FIDInceptionV3

TINY_CLIP = dict(
    text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=77),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    projection_dim=16,
)  # fmt: skip


def random_inception(seed: int = 0, input_size: int = 299) -> FIDInceptionV3:
    """The FID network with random weights that keep activations alive through its 94 convolutions.

    PyTorch's default init shrinks activations at every layer, so features would all be ~1e-8;
    He init (the ReLU gain) keeps their scale, so different images give different features.
    """
    torch.manual_seed(seed)
    model = FIDInceptionV3(input_size)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()
