"""The long bench's overfitting and strength summaries, on hand-made runs whose answers are known."""

import pytest

from trilora.toy.overfitting import largest_step, onset, onset_markdown, reach, strength_summary_markdown


def run(method: str, seed: int, fid_last: float) -> dict:
    points = [(0, 1.0, 100, 0.9, 0.0, 0.5), (100, 0.5, 40, 0.8, 0.7, 0.3), (200, 0.6, 30, 0.6, 0.9, 0.2),
              (300, 0.8, fid_last, 0.4, 0.9, 0.1)]  # fmt: skip
    curve = [
        {"strength": s, "style": h, "fidelity": f}
        for s, h, f in [(0, 0.0, 0.9), (0.5, 0.4, 0.8), (1.0, 0.8, 0.7)]
    ]
    return {
        "method": method, "rank": 4, "seed": seed,
        "validations": [{"step": s, "val_loss": v} for s, v, *_ in points],
        "checkpoints": [{"step": s, "fid": f, "fidelity_unseen": u, "style": h, "nearest": n}
                        for s, _, f, u, h, n in points],
        "strengths": {"last": curve},
    }  # fmt: skip


def test_onset_reads_each_peak_from_trained_checkpoints_only():
    o = onset(run("lora", 0, 60))
    assert o["val_min_step"] == 100 and o["val_rise"] == pytest.approx(0.6)
    assert (o["fid_min_step"], o["fid_min"], o["fid_last"]) == (200, 30, 60)
    assert (o["unseen_top_step"], o["unseen_top"], o["unseen_last"]) == (100, 0.8, 0.4)  # not the base's 0.9
    assert (o["nearest_at_fid_min"], o["nearest_last"], o["style_last"]) == (0.2, 0.1, 0.9)


def test_reach_interpolates_between_strengths_and_says_never():
    curve = run("lora", 0, 60)["strengths"]["last"]
    assert reach(curve) == pytest.approx(0.5 + 0.5 * (0.1 / 0.4))
    assert reach(curve, level=0.0) == 0.0 and reach(curve, level=0.95) is None
    assert largest_step(curve) == pytest.approx(0.4) and largest_step(curve, "fidelity") == pytest.approx(0.1)


def test_summaries_average_over_seeds_per_method():
    runs = [run("lora", 0, 50), run("lora", 1, 70), run("trilora", 0, 40)]
    onset_rows = onset_markdown(runs)
    assert "| lora | 4 | 100 ± 0 | +60 % | 200 ± 0 | 30 ± 0 → 60 ± 14 |" in "\n".join(onset_rows)
    assert any(row.startswith("| trilora | 4 | 100 | +60 % |") for row in onset_rows)
    strength_rows = strength_summary_markdown(runs)
    assert "| lora | 4 | last | 2 of 2 | 0.62 ± 0.00 | 0.40 ± 0.00 | 0.10 ± 0.00 |" in strength_rows
    assert (
        onset_markdown([{**runs[0], "checkpoints": [{"step": 0, "fid": 1}]}]) == []
    )  # a short bench: no section
