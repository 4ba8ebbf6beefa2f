import math

import pytest
import torch

from trilora.training.metrics import smooth
from trilora.training.schedule import lr_at
from trilora.training.validation import EarlyStopping, mean_and_standard_error, validation_timesteps


def test_warmup_then_constant_or_cosine():
    assert [lr_at(s, 1.0, 10, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(0, 1.0, 10, kind="cosine") == 1.0
    assert lr_at(5, 1.0, 10, kind="cosine") == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, kind="cosine") == pytest.approx(0.0)
    assert lr_at(9, 2.0, 10, warmup_steps=2, kind="cosine") < lr_at(8, 2.0, 10, warmup_steps=2, kind="cosine")


def test_validation_timesteps_spread_over_the_schedule():
    assert validation_timesteps(4, 1000).tolist() == [125, 375, 625, 875]
    assert validation_timesteps(1, 1000).tolist() == [500]


def test_early_stopping_counts_validations_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert stopper.update(1.0, 0) and stopper.best_step == 0
    assert not stopper.update(0.95, 10)  # better, but not by more than min_delta
    assert not stopper.should_stop
    assert stopper.update(0.5, 20) and stopper.bad_validations == 0
    assert not stopper.update(0.6, 30) and not stopper.update(0.7, 40)
    assert stopper.should_stop and stopper.best_step == 20 and stopper.best_loss == 0.5


def test_margin_counts_only_rises_beyond_the_standard_error():
    stopper = EarlyStopping(patience=2, margin=True)
    assert stopper.update(0.5, 0, se=0.1, val_loss=0.7) and stopper.best_val_loss == 0.7
    assert not stopper.update(0.58, 10, se=0.1) and stopper.bad_validations == 0  # within its error bar
    assert not stopper.update(0.65, 20, se=0.1) and stopper.bad_validations == 1
    assert not stopper.update(0.7, 30, se=0.1) and stopper.should_stop and stopper.best_step == 0
    plain = EarlyStopping(patience=2)
    plain.update(0.5, 0)
    assert not plain.update(0.58, 10, se=0.1) and plain.bad_validations == 1


def test_mid_range_is_the_middle_half_of_the_schedule():
    from trilora.training.validation import mid_range, signal_value

    by_t = {62: 9.0, 312: 1.0, 687: 3.0, 750: 9.0, 937: 9.0}
    assert mid_range(by_t, 1000) == 2.0
    assert mid_range({10: 1.0, 990: 3.0}, 1000) == 2.0  # none in the middle: all of them
    assert (
        signal_value("val_loss_mid", 5.0, by_t, 1000) == 2.0
        and signal_value("val_loss", 5.0, by_t, 1000) == 5.0
    )


def test_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    stopper.update(1.0, 0)
    for step in range(1, 50):
        stopper.update(2.0, step)
    assert not stopper.should_stop


def test_mean_and_standard_error():
    mean, se = mean_and_standard_error(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_and_standard_error(torch.tensor([3.0])) == (3.0, 0.0)


def test_smoothing_is_bias_corrected():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], weight=0.5)[1] == pytest.approx((0.5 * 0.5 + 0.5 * 3.0) / 0.75)


def test_early_stopping_state_is_the_counters_not_the_settings():
    """--patience and --min-delta may change on resume: a checkpoint restores only the counters."""
    old = EarlyStopping(patience=2)
    for step, loss in enumerate([1.0, 0.5, 0.6, 0.7]):
        old.update(loss, step)
    assert old.should_stop
    resumed = EarlyStopping(patience=5, min_delta=0.01)
    resumed.load_state_dict(old.state_dict())
    assert (resumed.best_loss, resumed.best_step, resumed.bad_validations) == (0.5, 1, 2)
    legacy = EarlyStopping(patience=2)  # a checkpoint from before --stop-on has no best_val_loss
    legacy.load_state_dict({k: v for k, v in old.state_dict().items() if k != "best_val_loss"})
    assert legacy.best_val_loss == 0.5
    assert (resumed.patience, resumed.min_delta) == (5, 0.01) and not resumed.should_stop


def test_loss_by_timestep_and_its_metrics_column(tmp_path):
    from trilora.training.metrics import MetricsLog, read_metrics
    from trilora.training.validation import by_timestep

    losses = torch.tensor([[0.1, 0.2, 0.4], [0.3, 0.2, 0.0]])  # 2 images x 3 timesteps
    by_t = by_timestep(losses, torch.tensor([166, 500, 833]))
    assert by_t == pytest.approx({166: 0.2, 500: 0.2, 833: 0.2}) and list(by_t) == [166, 500, 833]
    log = MetricsLog(None)
    log.path = tmp_path / "metrics.csv"  # the file alone, no TensorBoard
    log._start_file()
    log.write(step=0, val_loss=0.2, val_loss_se=0.05, val_loss_by_t=by_t, lr=1e-4, elapsed_s=0.0)
    log.write(step=1, train_loss=0.3, lr=1e-4, elapsed_s=1.0)
    rows = read_metrics(log.path)
    assert rows[0]["val_loss_by_t"] == pytest.approx(by_t) and rows[1]["val_loss_by_t"] is None
    old = tmp_path / "old.csv"  # written before the column existed
    old.write_text("step,train_loss,val_loss,val_loss_se,lr,elapsed_s\n0,,0.5,0.1,0.0001,0\n")
    assert read_metrics(old)[0]["val_loss_by_t"] is None and read_metrics(old)[0]["val_loss"] == 0.5
