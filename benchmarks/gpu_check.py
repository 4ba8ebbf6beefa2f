"""The one device check: trilora's training step on full-size SD 1.5 and SDXL (random weights) on a GPU.

Measures, in one run, and prints one Markdown table (also written as JSON with --out):
- seconds per step at batch 1, 4 and 8 at 512 px, eager and with the fast path (--compile
  --channels-last), through `trilora train` itself, and MFU from the FLOP count of a LoRA-r16 step
  (1,725 GFLOP per image, 2,317 with gradient checkpointing; issue 13) against PEAK_TFLOPS; the
  fast path with --cuda-graphs at batch 1 (where launches bound the step), its failure recorded
  rather than ending the check;
- host synchronisations inside a training step (torch.cuda.set_sync_debug_mode counts them; the
  design is none: the loss is read a step late, trilora/training/readout.py);
- the bare loop of benchmarks/train_step.py at the same batch (forward + backward + AdamW, nothing
  else) as the baseline;
- with --diffusers-script FILE, diffusers' train_text_to_image_lora.py at batch 8 on the same model,
  images and rank (benchmarks/diffusers_script.py), and trilora's throughput against it;
- peak memory (torch.cuda.max_memory_allocated) against the `--dry-run` estimate, for batch 1 with
  and without gradient checkpointing and batch 4;
- a bf16 sanity run: finite, falling loss on one repeated image, and the exported file loading in
  diffusers' load_lora_weights;
- then SDXL base (random bf16 weights) at 1024 px: batch 1 and 4, eager and fast, batch 1 with
  gradient checkpointing, MFU from SDXL's FLOP count (about 14.5 TFLOP per image per step, 19.5
  with checkpointing; issue 21), peak memory against `--dry-run`; with --diffusers-sdxl-script FILE,
  diffusers' train_text_to_image_lora_sdxl.py beside it at batch 4. --no-sdxl leaves SDXL out.

    benchmarks/gpu_check.sh            # on the GPU machine (about 5 minutes on an H200)
    benchmarks/gpu_check.sh --smoke    # the same code on the CPU with the tiny model (the test suite)

With --out, the JSON is rewritten after each measurement: a check cut short keeps what it measured.
"""

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers_script import script_row  # noqa: E402
from train_step import bare_loop, save_sd15_random  # noqa: E402

from trilora.base.tiny import TINY_RESOLUTION, make_shapes_dataset, save_tiny_pipeline  # noqa: E402
from trilora.config import from_dict  # noqa: E402
from trilora.training import loop  # noqa: E402
from trilora.training.loop import train  # noqa: E402
from trilora.training.memory import estimate_memory, meta_models  # noqa: E402
from trilora.training.metrics import read_metrics  # noqa: E402

# a step's GFLOP per image, gradient checkpointing off/on: SD 1.5 LoRA r16 at 512 px (issue 13), SDXL
# at 1024 px (issue 21); the tiny models of --smoke get no MFU
GFLOP_PER_IMAGE = {"sd1": {False: 1725.0, True: 2317.0}, "sdxl": {False: 14_500.0, True: 19_500.0}}
PEAK_TFLOPS = 790.0  # bf16 dense matrix products measured on this workplace's H200 (device KINDS.md)


def run_config(base: Path, data: Path, out: Path, resolution: int, batch: int, steps: int, **train_options):
    return from_dict({
        "output": str(out), "model": {"base": str(base)},
        "data": {"data": str(data), "resolution": resolution, "val_fraction": 0.0},
        "adapter": {"method": "trilora", "rank": 16},
        "train": {"batch_size": batch, "steps": steps, "lr": 1e-4} | train_options,
        "validation": {"validate_every": steps + 1}, "checkpoint": {"checkpoint_every": 0},
    })  # fmt: skip


def step_seconds(out: Path, warmup: int) -> float:
    elapsed = [r["elapsed_s"] for r in read_metrics(out / "metrics.csv") if r["step"] >= 1]
    return statistics.median([b - a for a, b in zip(elapsed, elapsed[1:], strict=False)][warmup:])


def timed_run(
    tmp: Path, name: str, base, data, resolution, batch, steps, warmup, family="sd1", **options
) -> dict:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = run_config(base, data, tmp / name, resolution, batch, steps, **options)
    started = time.perf_counter()
    train(config)
    row = {"name": name, "batch": batch, "s_per_step": step_seconds(tmp / name, warmup),
           "wall_s": time.perf_counter() - started}  # fmt: skip
    if torch.cuda.is_available():
        row["peak_bytes"] = torch.cuda.max_memory_allocated()
        models = meta_models(config)
        estimate = estimate_memory(models, config)
        row["estimate_bytes"] = estimate.phases(config.train.gradient_checkpointing)["training step"]
    checkpointing = bool(options.get("gradient_checkpointing"))
    row["mfu"] = (
        GFLOP_PER_IMAGE[family][checkpointing] * 1e9 * batch / row["s_per_step"] / (PEAK_TFLOPS * 1e12)
    )
    return row


def guarded(measure, name: str, batch: int) -> dict:
    """A measurement that may fail on a new GPU path (CUDA graphs): its error goes into the table."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 -- recorded, so the rest of the check still runs
        return {"name": name, "batch": batch, "error": f"{type(error).__name__}: {str(error)[:160]}"}


def syncs_per_step(tmp: Path, base: Path, data: Path, resolution: int, steps: int) -> float | None:
    """Host synchronisations inside trilora's training step, counted by torch.cuda.set_sync_debug_mode
    (a warning at each), the median over the steps after the first; None on the CPU."""
    counts, step = [], loop.train_step

    def counted(*args, **kwargs):
        if not torch.cuda.is_available():
            return step(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return step(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))

    loop.train_step = counted
    try:
        train(run_config(base, data, tmp / "syncs", resolution, 1, steps))
    finally:
        loop.train_step = step
    return statistics.median(counts[1:]) if len(counts) > 1 else None


def bf16_sanity(tmp: Path, base: Path, resolution: int, steps: int) -> dict:
    """One image, many steps: the loss must stay finite and fall; the export must load in diffusers."""
    from trilora.base.load import load_pipeline

    data = make_shapes_dataset(tmp / "one", count=1, size=resolution)
    config = run_config(base, data, tmp / "bf16", resolution, 1, steps, mixed_precision="bf16", lr=1e-3)
    summary = train(config)
    losses = [
        r["train_loss"] for r in read_metrics(tmp / "bf16" / "metrics.csv") if r["train_loss"] is not None
    ]
    k = max(1, len(losses) // 5)
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    pipe = load_pipeline(base)
    kohya = Path(summary["exported"]["kohya"])
    pipe.load_lora_weights(str(kohya.parent), weight_name=kohya.name)
    return {"finite": all(math.isfinite(v) for v in losses), "first": first, "last": last,
            "falls": last < first, "loads_in_diffusers": True}  # fmt: skip


def table(rows: list[dict], bare: dict, sanity: dict | None, syncs: float | None, device: str) -> str:
    lines = [f"device: {device}; trilora train, TriLoRA rank 16 (SD 1.5 at 512 px, SDXL at 1024 px in bf16); "
             f"MFU against {PEAK_TFLOPS:g} TFLOP/s bf16", "",
             "| run | batch | s/step | MFU | peak memory | --dry-run estimate | estimate off by |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['batch']} | failed: {r['error']} | – | – | – | – |")
            continue
        peak, estimate = r.get("peak_bytes"), r.get("estimate_bytes")
        memory = (
            (f"{peak / 2**30:.2f} GiB", f"{estimate / 2**30:.2f} GiB", f"{(estimate - peak) / peak:+.0%}")
            if peak
            else ("–",) * 3
        )
        mfu = (
            f"{r['mfu']:.1%}" if peak else "–"
        )  # the FLOP counts are the full-size models': not the tiny ones'
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['s_per_step'] * 1000:.1f} ms | {mfu} | "
            + " | ".join(memory)
            + " |"
        )
    for batch, seconds in bare.items():
        lines.append(f"| bare loop (train_step.py) | {batch} | {seconds * 1000:.1f} ms | – | – | – | – |")
    lines += script_ratios(rows)
    lines += ["", "host synchronisations per training step: " + ("–" if syncs is None else f"{syncs:g}")]
    if sanity:
        lines += [f"bf16 sanity: finite {sanity['finite']}, loss {sanity['first']:.4f} -> {sanity['last']:.4f} "
                  f"(falls: {sanity['falls']}), export loads in diffusers: {sanity['loads_in_diffusers']}"]  # fmt: skip
    return "\n".join(lines)


class FastPathLines(logging.Handler):
    """The runs' "fast path: attention ..." log lines: which SDPA kernel ran, what was compiled."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("fast path:") and message not in self.lines:
            self.lines.append(message)


def script_ratios(rows: list[dict]) -> list[str]:
    """trilora's throughput against diffusers' script at the script's batch (issue 13's goal: >= 1.3x)."""
    timed = {r["name"]: r["s_per_step"] for r in rows if "error" not in r}
    lines = []
    for r in rows:
        prefix = "sdxl " if r["name"].startswith("sdxl ") else ""
        if r["name"].startswith(f"{prefix}diffusers script") and "error" not in r:
            ours = []
            for kind in ("eager", "fast"):
                mine = timed.get(f"{prefix}{kind} b{r['batch']}")
                if mine:
                    ours.append(f"{kind} {r['s_per_step'] / mine:.2f}x")
            lines += ["", f"{prefix or 'sd1 '}throughput against diffusers' script at batch {r['batch']}: "
                      f"{', '.join(ours) or '-'} (goal: >= 1.3x)"]  # fmt: skip
    return lines


def save_sdxl_random(path: Path, device: torch.device) -> Path:
    """Full-size SDXL base with random bf16 weights (built on `device`) as a diffusers folder."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from trilora.base.load import models_on_meta
    from trilora.families.registry import FAMILIES
    from trilora.families.tiny import scheduler_of

    configs = FAMILIES["sdxl"].configs
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        models = models_on_meta(configs, FAMILIES["sdxl"], device=device.type)
    finally:
        torch.set_default_dtype(torch.float32)
    tokenizers = {
        name: CLIPTokenizer.from_pretrained(configs / name) for name in ("tokenizer", "tokenizer_2")
    }
    pipe = StableDiffusionXLPipeline(**models, **tokenizers, scheduler=scheduler_of(configs))
    pipe.to(dtype=torch.bfloat16).save_pretrained(path)
    return path


def sdxl_rows(tmp: Path, smoke: bool, device: torch.device, steps: int, warmup: int, fast: dict, measured,
              script: Path | None) -> None:  # fmt: skip
    """SDXL's rows, cheap ones first: eager at batch 1 and 4 and with checkpointing, diffusers' SDXL
    script beside it, then the compiled fast path."""
    base, resolution = (
        (save_tiny_pipeline(tmp / "sdxl", family="sdxl"), TINY_RESOLUTION)
        if smoke
        else (save_sdxl_random(tmp / "sdxl", device), 1024)
    )
    batches = (2,) if smoke else (1, 4)
    data = make_shapes_dataset(tmp / "sdxl-data", count=max(batches), size=resolution)
    common = dict(family="sdxl", mixed_precision="bf16")

    def run(name, batch, **options):
        return lambda: timed_run(tmp, name, base, data, resolution, batch, steps, warmup, **common, **options)

    for batch in batches:
        measured("rows", run(f"sdxl eager b{batch}", batch)())
    name = "sdxl eager b1 checkpointing"
    measured("rows", guarded(run(name, 1, gradient_checkpointing=True), name, 1))
    if script:
        b, label = max(batches), f"sdxl diffusers script b{max(batches)}"
        lengths = (2, 4) if smoke else (5, 25)
        measured("rows", guarded(lambda: script_row(script.resolve(), base, data, tmp / "sdxl-script", resolution, b,
                                                    16, lengths, device.type == "cuda") | {"name": label}, label, b))  # fmt: skip
    for batch in sorted(batches, key=lambda b: (b != max(batches), b)):
        measured("rows", guarded(run(f"sdxl fast b{batch}", batch, **fast), f"sdxl fast b{batch}", batch))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="The tiny model on the CPU, few steps (tests).")
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument(
        "--diffusers-script",
        type=Path,
        metavar="FILE",
        help="diffusers' examples/text_to_image/train_text_to_image_lora.py, to time beside trilora.",
    )
    parser.add_argument(
        "--diffusers-sdxl-script",
        type=Path,
        metavar="FILE",
        help="diffusers' examples/text_to_image/train_text_to_image_lora_sdxl.py, beside trilora on SDXL.",
    )
    parser.add_argument("--no-sdxl", action="store_true", help="Leave the SDXL rows out.")  # fmt: skip
    args = parser.parse_args()
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --smoke on a CPU")
    for flag, script in (
        ("--diffusers-script", args.diffusers_script),
        ("--diffusers-sdxl-script", args.diffusers_sdxl_script),
    ):
        if script and not script.is_file():
            raise SystemExit(f"gpu_check: {flag} {script} is not a file")  # fmt: skip
    steps, warmup = (3, 1) if smoke else (25, 5)
    batches = (2,) if smoke else (1, 4, 8)
    # on the CPU the compiled path is checked by tests/training/test_fast.py; here it would take minutes
    fast = {"channels_last": True} if smoke else {"channels_last": True, "compile": True}
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    found = {"rows": [], "bare": {}, "syncs_per_step": None, "bf16": None, "device": name, "fast_path": []}
    fast_path = FastPathLines()
    logging.getLogger("trilora").addHandler(fast_path)
    logging.getLogger("trilora").setLevel(logging.INFO)

    def measured(key: str, value) -> None:
        if key == "rows":
            found["rows"].append(value)
        else:
            found[key] = value
        found["fast_path"] = fast_path.lines
        if args.out:
            args.out.write_text(json.dumps(found, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, resolution = (
            (save_tiny_pipeline(tmp / "base"), TINY_RESOLUTION)
            if smoke
            else (save_sd15_random(tmp / "base"), 512)
        )
        data = make_shapes_dataset(tmp / "data", count=max(batches), size=resolution)
        # the cheap measurements first, the compiled ones (a compile per block shape and batch) last:
        # a check cut short by its time limit keeps the most
        for batch in batches:
            measured("rows", timed_run(tmp, f"eager b{batch}", base, data, resolution, batch, steps, warmup))
        measured("rows", timed_run(tmp, "eager b1 checkpointing", base, data, resolution, 1, steps, warmup,
                                   gradient_checkpointing=True))  # fmt: skip
        measured("syncs_per_step", syncs_per_step(tmp, base, data, resolution, 6))
        measured("bare", {
            b: statistics.median(bare_loop(base, resolution, b, 16, steps, device)[warmup:]) for b in batches
        })  # fmt: skip
        measured("bf16", bf16_sanity(tmp, base, resolution, 12 if smoke else 60))
        if args.diffusers_script:
            b, label = max(batches), f"diffusers script b{max(batches)}"
            lengths = (2, 4) if smoke else (5, 25)
            measured("rows", guarded(lambda: script_row(args.diffusers_script.resolve(), base, data, tmp, resolution, b,
                                                        16, lengths, device.type == "cuda"), label, b))  # fmt: skip
        for batch in sorted(batches, key=lambda b: (b != max(batches), b)):  # batch 8 first: the goal's
            measured(
                "rows", timed_run(tmp, f"fast b{batch}", base, data, resolution, batch, steps, warmup, **fast)
            )
        # compiling takes minutes on a CPU; the option's CPU check is tests/training/test_fast.py
        if not smoke:
            graphs = fast | {"cuda_graphs": True}
            measured("rows", guarded(lambda: timed_run(tmp, "fast + CUDA graphs b1", base, data, resolution, 1, steps,
                                                       warmup, **graphs), "fast + CUDA graphs b1", 1))  # fmt: skip
        if not args.no_sdxl:
            sdxl_rows(tmp, smoke, device, steps, warmup, fast, measured, args.diffusers_sdxl_script)
    shown = f"{name}, torch {torch.__version__}"
    print(table(found["rows"], found["bare"], found["bf16"], found["syncs_per_step"], shown))
    print("\n".join(["", *fast_path.lines]))


if __name__ == "__main__":
    main()
