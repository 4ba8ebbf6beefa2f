"""CLIP score: 100 x cosine floored at 0, through a transformers CLIP folder read from disk only."""

import math

import pytest
import torch
from PIL import Image

from trilora.base.tiny import make_shapes_dataset
from trilora.errors import UserError
from trilora.evaluation.clip_score import CLIP_MODEL_ID, clip_score_from_embeddings, load_clip_scorer


def test_score_is_100_cosine_floored_at_zero():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    text = torch.tensor(
        [[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [math.cos(math.pi / 3), math.sin(math.pi / 3)], [-1.0, 0.1]]
    )
    assert clip_score_from_embeddings(image, text).tolist() == pytest.approx([100.0, 0.0, 0.0, 50.0, 0.0])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=6, seed=2)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    return images, [p.read_text() for p in sorted(folder.glob("*.txt"))]


def test_scores_match_clip_models_own_similarity(clip_dir, shapes):
    scorer = load_clip_scorer(clip_dir)
    images, prompts = shapes
    scores = scorer.scores(images, prompts, batch_size=4)
    assert scores.shape == (6,) and (scores > 0).any()
    # the same numbers through CLIPModel.forward, whose logits are exp(logit_scale) x cosine
    with torch.no_grad():
        pixels = scorer.image_processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = scorer.tokenizer(prompts, padding=True, return_tensors="pt")
        output = scorer.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
    cosine = output.logits_per_image.diagonal().double() / scorer.model.logit_scale.exp().double()
    assert scores.tolist() == pytest.approx((100 * cosine).clamp(min=0).tolist(), abs=1e-4)
    assert scorer.scores(images, prompts, batch_size=1).tolist() == pytest.approx(scores.tolist(), abs=1e-4)


def test_long_prompts_are_cut_at_77_tokens(clip_dir, shapes):
    images, _ = shapes
    scores = load_clip_scorer(clip_dir).scores(images[:2], ["a red circle " * 60, "x"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_missing_or_wrong_folder_is_a_user_error(tmp_path):
    for path in (None, tmp_path / "nowhere", tmp_path):
        with pytest.raises(UserError, match="--clip-model") as error:
            load_clip_scorer(path)
        assert CLIP_MODEL_ID in str(error.value)
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(UserError, match="cannot load the CLIP model"):
        load_clip_scorer(tmp_path)
