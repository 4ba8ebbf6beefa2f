"""The generation stopping signal on a real-model-shaped base: CLIP score from a local CLIP folder."""

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.scorers import stopping_scorer
from trilora.training.loop import train
from trilora.training.metrics import read_metrics


def test_clip_scores_the_signal_and_stopping_follows_it(tmp_path, tiny_model_dir, clip_dir):
    data = make_shapes_dataset(tmp_path / "data", count=10)
    summary = train(from_dict({
        "output": str(tmp_path / "run"), "model": {"base": str(tiny_model_dir)},
        "data": {"data": str(data), "resolution": 32, "val_fraction": 0.2},
        "adapter": {"rank": 2}, "train": {"batch_size": 2, "steps": 4},
        "validation": {"validate_every": 2, "val_timesteps": 2, "sample_steps": 2, "clip_model": str(clip_dir)},
    }), find_scorer=stopping_scorer)  # fmt: skip
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["val_loss"] is not None]
    signals = {r["step"]: r["signal"] for r in rows}
    assert summary["stop_on"] == "generation" and set(signals) == {0, 2, 4}
    assert all(-100 <= s <= 100 for s in signals.values())  # CLIP score: 100 x cosine
    assert len(set(signals.values())) == len(signals)  # the adapter changes the images, and CLIP sees it:
    # a scorer that returned a constant would tie every validation and pass the line below at step 0
    assert summary["best_step"] == max(signals, key=signals.get)  # ties: the first, as rounded in the csv
