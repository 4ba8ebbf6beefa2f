"""The random streams and the loss pieces, tested directly: seeds, data order, noise, targets, Min-SNR."""

import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from trilora.data.order import BatchOrder, epoch_batches
from trilora.seeds import PURPOSES, derive_seed
from trilora.training.losses import diffusion_target, min_snr_weights
from trilora.training.noise import training_noise


def test_no_two_streams_share_a_seed():
    seeds = [
        derive_seed(seed, purpose, index)
        for seed in (0, 1, 7)
        for purpose in PURPOSES
        for index in range(300)
    ]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(3, "noise", 5) == derive_seed(3, "noise", 5)


def test_an_unknown_purpose_is_a_bug():
    try:
        derive_seed(0, "nosie", 1)
    except ValueError as error:
        assert "nosie" in str(error)
    else:
        raise AssertionError("an unknown purpose must raise")


@settings(max_examples=30, deadline=None)
@given(
    repeats=st.lists(st.integers(1, 4), min_size=1, max_size=12),
    batch=st.integers(1, 5),
    seed=st.integers(0, 99),
)
def test_an_epoch_sees_every_repeat_once_in_batches_of_one_bucket(repeats, batch, seed):
    buckets = [i % 2 for i in range(len(repeats))]
    batches = epoch_batches(repeats, buckets, batch, seed, epoch=0)
    seen = sorted(i for b in batches for i in b)
    assert seen == sorted(i for i, r in enumerate(repeats) for _ in range(r))
    assert all(len({buckets[i] for i in b}) == 1 and 1 <= len(b) <= batch for b in batches)


def test_batch_order_is_a_function_of_the_batch_number():
    order = BatchOrder([1] * 10, [0] * 10, 3, seed=4)
    forward = [order(n) for n in range(12)]
    again = BatchOrder([1] * 10, [0] * 10, 3, seed=4)
    assert [again(n) for n in (11, 0, 5)] == [forward[11], forward[0], forward[5]]  # any order, no state
    assert forward[:4] != forward[4:8]  # each epoch is shuffled anew
    other_seed = BatchOrder([1] * 10, [0] * 10, 3, seed=5)
    assert [other_seed(n) for n in range(4)] != forward[:4]


def test_training_noise_belongs_to_the_sample_not_the_batch():
    together, t_together = training_noise(0, [3, 4, 5], (4, 8, 8), 1000)
    alone, t_alone = training_noise(0, [4], (4, 8, 8), 1000)
    assert torch.equal(together[1], alone[0]) and t_together[1] == t_alone[0]
    assert not torch.equal(together[0], together[1])
    offset, _ = training_noise(0, [4], (4, 8, 8), 1000, noise_offset=0.1)
    per_channel = (offset - alone)[0].flatten(1)
    assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel))  # one constant per channel


def scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    )


def test_targets_of_both_prediction_types():
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([10, 500, 990])
    assert torch.equal(diffusion_target(scheduler("epsilon"), latents, noise, timesteps), noise)
    v_scheduler = scheduler("v_prediction")
    alpha_bar = v_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents  # v = sqrt(a) eps - sqrt(1 - a) x0
    torch.testing.assert_close(diffusion_target(v_scheduler, latents, noise, timesteps), expected)


def test_min_snr_weights():
    timesteps = torch.arange(0, 1000, 37)
    for kind in ("epsilon", "v_prediction"):
        s = scheduler(kind)
        alpha_bar = s.alphas_cumprod[timesteps]
        snr = alpha_bar / (1 - alpha_bar)
        weights = min_snr_weights(s, timesteps, gamma=5.0)
        expected = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if kind == "v_prediction" else snr)
        torch.testing.assert_close(weights, expected)
        assert torch.all(weights <= 1) and torch.all(weights > 0)
