"""How long runs overfit and how adapters answer their strength, from a bench's scored checkpoints:
pure functions on its numbers, mean ± sd over seeds per method and rank.

- Onset: the step of the lowest validation loss, of the lowest toy FID and of the highest
  fidelity on unseen colours (trained checkpoints only), and what is left of each at the end.
- Strength: the strength at which an adapter first reaches a style hit of 0.5 (linear between the
  measured strengths; lower = reaches the style sooner), and the largest change of style hit
  between neighbouring strengths (lower = a smoother response).
"""

from trilora.toy.report import _fmt, mean_std

STYLE_LEVEL = 0.5


def onset(run: dict) -> dict:
    trained = [c for c in run["checkpoints"] if c["step"] > 0]
    last = run["checkpoints"][-1]
    lowest_val = min(run["validations"], key=lambda v: v["val_loss"])
    lowest_fid = min(trained, key=lambda c: c["fid"])
    top_unseen = max(trained, key=lambda c: c["fidelity_unseen"])
    return {
        "val_min_step": lowest_val["step"],
        "val_rise": run["validations"][-1]["val_loss"] / lowest_val["val_loss"] - 1,
        "fid_min_step": lowest_fid["step"], "fid_min": lowest_fid["fid"], "fid_last": last["fid"],
        "unseen_top_step": top_unseen["step"], "unseen_top": top_unseen["fidelity_unseen"],
        "unseen_last": last["fidelity_unseen"], "style_last": last["style"],
        "nearest_at_fid_min": lowest_fid["nearest"], "nearest_last": last["nearest"],
    }  # fmt: skip


def reach(curve: list[dict], key: str = "style", level: float = STYLE_LEVEL) -> float | None:
    """The strength at which `key` first reaches `level`, linear between measured strengths; None if never."""
    previous = None
    for point in sorted(curve, key=lambda p: p["strength"]):
        if point[key] >= level:
            if previous is None or point[key] == previous[key]:
                return point["strength"]
            share = (level - previous[key]) / (point[key] - previous[key])
            return previous["strength"] + share * (point["strength"] - previous["strength"])
        previous = point
    return None


def largest_step(curve: list[dict], key: str = "style") -> float:
    values = [p[key] for p in sorted(curve, key=lambda p: p["strength"])]
    return max((abs(b - a) for a, b in zip(values[:-1], values[1:], strict=True)), default=0.0)


def groups(runs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    found = {}
    for run in runs:
        found.setdefault((run["method"], run["rank"]), []).append(run)
    return found


def onset_markdown(runs: list[dict]) -> list[str]:
    if not runs or any("fidelity_unseen" not in c for r in runs for c in r["checkpoints"]):
        return []
    lines = ["", "## When each method starts to overfit", "",
             "Per method and rank, mean ± sd over seeds: the step of the lowest validation loss and how far it "
             "has risen by the last step; the step of the lowest toy FID and the toy FID there and at the end; "
             "the step of the highest fidelity on unseen colours and that fidelity there and at the end; the "
             "style hit at the end; the distance to the nearest training image at the lowest-FID checkpoint and "
             "at the end (lower: closer to copying).", "",
             "| method | rank | lowest val loss at | val loss rise by the end | lowest toy FID at | toy FID lowest "
             "→ end | top unseen fidelity at | unseen fidelity top → end | style hit at the end | nearest "
             "lowest-FID → end |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for (method, rank), group in groups(runs).items():
        o = [onset(r) for r in group]
        m = {k: mean_std([x[k] for x in o]) for k in o[0]}
        lines.append(
            f"| {method} | {rank} | {_fmt(m['val_min_step'], 0)} | {100 * m['val_rise']['mean']:+.0f} % | "
            f"{_fmt(m['fid_min_step'], 0)} | {_fmt(m['fid_min'], 0)} → {_fmt(m['fid_last'], 0)} | "
            f"{_fmt(m['unseen_top_step'], 0)} | {_fmt(m['unseen_top'], 2)} → {_fmt(m['unseen_last'], 2)} | "
            f"{_fmt(m['style_last'], 2)} | {_fmt(m['nearest_at_fid_min'], 3)} → {_fmt(m['nearest_last'], 3)} |"
        )
    return lines


def strength_summary_markdown(runs: list[dict]) -> list[str]:
    rows = []
    for (method, rank), group in groups(runs).items():
        for which in ("best", "last"):
            curves = [r["strengths"][which] for r in group if which in r.get("strengths", {})]
            if not curves:
                continue
            reached = [reach(c) for c in curves]
            hit = [x for x in reached if x is not None]
            rows.append(
                f"| {method} | {rank} | {which} | {len(hit)} of {len(curves)} | "
                f"{_fmt(mean_std(hit), 2) if hit else '–'} | {_fmt(mean_std([largest_step(c) for c in curves]), 2)} | "
                f"{_fmt(mean_std([largest_step(c, 'fidelity') for c in curves]), 2)} |"
            )
    if not rows:
        return []
    return ["", "## Strength control", "", f"How each adapter answers its strength, mean ± sd over seeds: in how many runs it reaches a style "
            f"hit of {STYLE_LEVEL:g} within the strengths measured, at what strength (linear between measured "
            "strengths; lower: the style comes sooner), and the largest change of style hit and of fidelity "
            "between neighbouring strengths (lower: a smoother response).", "",
            f"| method | rank | checkpoint | reaches style {STYLE_LEVEL:g} | at strength | largest style-hit step "
            "| largest fidelity step |",
            "| --- | --- | --- | --- | --- | --- | --- |", *rows]  # fmt: skip
