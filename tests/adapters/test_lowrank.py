"""The toolbox's pure math against ΔW formed and decomposed with torch.linalg."""

import pytest
import torch

from trilora.adapters.lowrank import choose_rank, truncate


@pytest.mark.parametrize("scale, new_scale", [(0.5, 0.5), (-0.5, -0.5), (-0.5, 1.0), (2.0, -1.0)])
def test_truncate_is_the_eckart_young_approximation_for_any_sign_of_scale(scale, new_scale):
    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(6, 20, generator=generator), torch.randn(12, 6, generator=generator)
    delta = scale * (up.double() @ down.double())
    new_down, new_up, kept = truncate(down, up, scale, new_scale, rank=3)
    u, s, vh = torch.linalg.svd(delta)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    assert torch.allclose(new_scale * (new_up.double() @ new_down.double()), best, atol=1e-5)
    assert kept.error == pytest.approx(float((s[3:].square().sum() / s.square().sum()).sqrt()), rel=1e-6)


def test_choose_rank_by_rank_energy_and_error():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1: shares 9/14, 13/14, 1
    assert choose_rank(s, rank=2) == 2 and choose_rank(s, rank=9) == 4
    assert (
        choose_rank(s, energy=0.9) == 2 and choose_rank(s, energy=0.95) == 3 and choose_rank(s, energy=0) == 1
    )
    assert choose_rank(s, max_error=(1 / 14) ** 0.5) == 2 and choose_rank(s, max_error=0) == 3
    assert choose_rank(torch.zeros(3), energy=0.5) == 1
