"""Labels in plots come from users (--name, file names): they are drawn literally, never as mathtext."""

from trilora.evaluation.report import plot_png
from trilora.training.metrics import plot_losses

LABELS = ["$\\frac{broken$", "price: $5 and $6", "a_b^c $x$"]


def test_evaluation_plot_draws_dollar_labels_literally():
    rows = [{"label": "base model", "adapter": None, "strength": 0.0, "fid": 10.0, "clip_score": 20.0}]
    for i, label in enumerate(LABELS):
        rows.append(
            {
                "label": label,
                "adapter": f"{i}.safetensors",
                "strength": 1.0,
                "fid": 5.0 + i,
                "clip_score": 21.0,
            }
        )
    image = plot_png({"rows": rows, "recommended": {label: 1.0 for label in LABELS}})
    assert image.size[0] > 100


def test_loss_plot_title_is_literal(tmp_path):
    rows = [{"step": s, "train_loss": 1.0 / (s + 1), "val_loss": None, "val_loss_se": None} for s in range(5)]
    plot_losses(rows, tmp_path / "loss.png", best_step=None, title=LABELS[0])
    assert (tmp_path / "loss.png").stat().st_size > 1000
