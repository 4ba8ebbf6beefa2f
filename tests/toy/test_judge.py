import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from trilora.toy.judge import (
    EVAL_SEED_START,
    FEATURE_DIM,
    TRAIN_SEED_LIMIT,
    WEIGHTS,
    load_judge,
    to_judge_input,
)
from trilora.toy.metrics import attribute_accuracy, toy_fid
from trilora.toy.world import COLOURS, FLOORS, STYLES, TIMES, UNSEEN_STYLES, Attributes, render

ROOT = Path(__file__).resolve().parents[2]
TEST_SEED_START = (
    2 * EVAL_SEED_START
)  # disjoint from the training seeds and the training script's held-out ones
# every combination once (432), so the unseen styles count as much as the others
EVERY = [Attributes(*combination) for combination in itertools.product(STYLES, COLOURS, FLOORS, TIMES)]


@pytest.fixture(scope="module")
def judge():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the judge's figures are pinned at one thread; other tests must not inherit it
    yield load_judge()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def renders():
    assert TEST_SEED_START >= TRAIN_SEED_LIMIT
    return [render(a, TEST_SEED_START + i) for i, a in enumerate(EVERY)]


@pytest.fixture(scope="module")
def predicted(judge, renders):
    return judge.predict(renders)


def test_shipped_weights_are_small_fp16():
    assert WEIGHTS.stat().st_size < 2_000_000
    assert {t.dtype for t in load_file(str(WEIGHTS)).values() if t.is_floating_point()} == {torch.float16}


def test_judge_reads_every_attribute_of_fresh_renders(predicted):
    accuracy = attribute_accuracy(predicted, EVERY)
    for name in ("style", "colour", "floors", "time"):
        assert accuracy[name] >= 0.98, accuracy


def test_judge_reads_the_unseen_styles(predicted):
    unseen = [(p, a) for p, a in zip(predicted, EVERY, strict=True) if a.style in UNSEEN_STYLES]
    accuracy = attribute_accuracy(*zip(*unseen, strict=True))
    assert accuracy["style"] >= 0.98, accuracy


def test_tensors_and_pil_images_read_alike(judge, renders):
    images = renders[:16]
    tensor = to_judge_input(images)
    assert tensor.shape == (16, 3, 32, 32) and tensor.min() >= -1 and tensor.max() <= 1
    assert judge.predict(tensor) == judge.predict(images)
    torch.testing.assert_close(judge.features(tensor), judge.features(images))


def test_larger_images_are_resized(judge):
    wanted = EVERY[::12]  # 36
    big = [render(a, TEST_SEED_START + 10_000 + i, size=64) for i, a in enumerate(wanted)]
    accuracy = attribute_accuracy(judge.predict(big), wanted)
    assert min(accuracy[name] for name in ("style", "colour", "floors", "time")) >= 0.9, accuracy
    upsampled = F.interpolate(to_judge_input(big[:4]), scale_factor=2)  # (4, 3, 128, 128) tensors too
    assert judge.predict(upsampled) == judge.predict(big[:4])


def test_features_give_a_toy_fid_that_sees_damage(judge, renders):
    features = judge.features(renders)
    assert features.shape == (len(EVERY), FEATURE_DIM)
    torch.testing.assert_close(judge.features(renders[:8]), features[:8])  # the batch does not matter
    other_seeds = judge.features([render(a, TEST_SEED_START + 20_000 + i) for i, a in enumerate(EVERY)])
    x = to_judge_input(renders)
    blurred = judge.features(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1))
    noisy = judge.features(x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    same_prompts = toy_fid(features, other_seeds)
    assert same_prompts < toy_fid(features, blurred)
    assert same_prompts < toy_fid(features, noisy)


def test_load_judge_refuses_weights_for_other_classes(tmp_path):
    path = tmp_path / "judge.safetensors"
    save_file(load_file(str(WEIGHTS)), str(path), metadata={"classes": '{"style": ["modern"]}'})
    with pytest.raises(ValueError, match="other classes"):
        load_judge(path)


def test_training_script_help_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_toy_judge.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--seed" in result.stdout
