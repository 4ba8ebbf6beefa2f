"""EMA's maths and its swap in and out of the model (trilora/training/ema.py)."""

import torch

from trilora.training.ema import EMA


def test_the_average_follows_its_closed_form_and_swaps_in_and_out_exactly():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16))
    start = weight.detach().float().clone()
    ema, decay = EMA([weight], 0.9), 0.9
    expected, values = start.clone(), []
    for _ in range(5):
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        ema.update()
        values.append(weight.detach().float().clone())
        expected = decay * expected + (1 - decay) * values[-1]
    assert ema.shadow[0].dtype == torch.float32  # kept in fp32 beside bf16 weights
    assert torch.allclose(ema.shadow[0], expected, atol=1e-6)
    trained = weight.detach().clone()
    with ema.applied():
        assert torch.equal(
            weight.detach(), expected.to(torch.bfloat16)
        )  # validation and export see the average
    assert torch.equal(weight.detach(), trained)  # and training goes on with its own weights, bit for bit
    restored = EMA([weight], decay)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow[0], ema.shadow[0])  # what a checkpoint carries across a resume
