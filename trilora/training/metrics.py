"""metrics.csv (one row per optimiser step, written as we go) and the loss plot."""

import csv
import io
import math
from pathlib import Path

from trilora.files import save_figure, write_text
from trilora.plotting import pyplot

COLUMNS = ("step", "train_loss", "val_loss", "val_loss_se", "lr", "elapsed_s", "val_loss_by_t", "signal")
# val_loss_by_t: the validation loss at each validation timestep, "t:loss t:loss ..." (ascending t)
# signal: the generation signal's score (--stop-on generation; higher is better)


class MetricsLog:
    """Rows in memory, in a CSV file and as TensorBoard scalars in `path.parent / "tb"`, unless
    `path` is None (processes other than rank 0)."""

    def __init__(self, path: Path | None, start_step: int = 0):
        self.path = path
        self.rows: list[dict] = []
        self.tensorboard = None
        if path is not None:
            # here, not at the top: torch (~1.5 s), which importing this module does not need
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint it resumes from
            self.tensorboard = SummaryWriter(
                str(path.parent / "tb"), purge_step=start_step + 1 if start_step else None
            )
        self._start_file()

    def _start_file(self) -> None:
        """The header and the rows so far, replacing the file atomically; later rows are appended."""
        if self.path is not None:
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer)
            writer.writerow(COLUMNS)
            writer.writerows(_csv_row(row) for row in self.rows)
            write_text(self.path, buffer.getvalue())

    def restore(self, rows: list[dict], to_tensorboard: bool = False) -> None:
        """Start over from these rows (on resume: the rows up to the checkpoint's step).

        `to_tensorboard`: also log them as scalars (a run continued into a new folder; in its own
        folder the event files have them already).
        """
        self.rows = [{k: (int(row[k]) if k == "step" else row.get(k)) for k in COLUMNS} for row in rows]
        self._start_file()
        if self.tensorboard is not None and to_tensorboard:
            for row in self.rows:
                self._scalars(row)

    def write(self, **row) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        self.rows.append(row)
        if self.path is None:
            return
        if self.tensorboard is not None:
            self._scalars(row)
        with self.path.open("a", newline="") as f:  # an append: a crash loses at most this row
            csv.writer(f).writerow(_csv_row(row))

    def _scalars(self, row: dict) -> None:
        for key in ("train_loss", "val_loss", "lr", "signal"):
            if row[key] is not None:
                self.tensorboard.add_scalar(key, row[key], row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _csv_row(row: dict) -> list[str]:
    return ["" if row[k] is None else _fmt(row[k]) for k in COLUMNS]


def _fmt(value) -> str:
    if isinstance(value, dict):
        return " ".join(f"{t}:{loss:.6g}" for t, loss in value.items())
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _parse(key: str, value: str | None):
    if value in ("", None):
        return None
    if key == "val_loss_by_t":
        return {int(t): float(loss) for t, loss in (pair.split(":") for pair in value.split())}
    return float(value)


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.csv (files from before a column was added read it as None)."""
    with Path(path).open(newline="") as f:
        return [{k: _parse(k, row.get(k)) for k in COLUMNS} for row in csv.DictReader(f)]


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled towards 0."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_losses(rows: list[dict], path: Path, best_step: int | None = None, title: str = "") -> None:
    """Train loss (raw and smoothed) and validation loss with standard-error bars; best step marked."""
    plt = pyplot()
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    val = [(r["step"], r["val_loss"], r["val_loss_se"] or 0.0) for r in rows if r["val_loss"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss")
        ax.plot(steps, smooth(list(losses)), color="tab:blue", label="train loss (smoothed)")
    if val:
        steps, losses, errors = zip(*val, strict=True)
        ax.errorbar(
            steps, losses, yerr=errors, color="tab:orange", marker="o", capsize=3, label="validation loss"
        )
    if best_step is not None:
        ax.axvline(best_step, color="tab:green", linestyle="--", label=f"best step {best_step}")
    finite = [v for _, v in train if math.isfinite(v)] + [v for _, v, _ in val if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("denoising loss (MSE)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
