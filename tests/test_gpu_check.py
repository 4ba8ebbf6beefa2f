"""benchmarks/gpu_check.sh --smoke: the device check's own code, on the CPU with the tiny model, so
that it cannot rot between the sessions that have a GPU."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Stands in for diffusers' train_text_to_image_lora.py and its SDXL variant (not in diffusers' wheel):
# it takes the flags gpu_check gives the real ones (each of which both have) and checks what it is handed.
STAND_IN_SCRIPT = """
import argparse, json, time
from pathlib import Path
from diffusers.utils import check_min_version
check_min_version("999.0.0.dev0")  # the real script asks for its own dev version: gpu_check stubs this
parser = argparse.ArgumentParser()
for flag in ("--pretrained_model_name_or_path", "--train_data_dir", "--resolution", "--train_batch_size",
             "--max_train_steps", "--rank", "--learning_rate", "--lr_scheduler", "--lr_warmup_steps",
             "--checkpointing_steps", "--seed", "--output_dir", "--mixed_precision"):
    parser.add_argument(flag)
parser.add_argument("--center_crop", action="store_true")
args = parser.parse_args()
folder = Path(args.train_data_dir)
rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
assert rows and all((folder / row["file_name"]).is_file() and row["text"] for row in rows), rows
assert (Path(args.pretrained_model_name_or_path) / "model_index.json").is_file()
time.sleep(0.01 * int(args.max_train_steps))
"""


@pytest.mark.slow  # ~30 s: eight short training runs, the bare loop and the bf16 sanity run
def test_gpu_check_smoke_runs_every_measurement(tmp_path):
    out, script = tmp_path / "gpu_check.json", tmp_path / "train_text_to_image_lora.py"
    script.write_text(STAND_IN_SCRIPT)
    result = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out),
                             "--diffusers-script", str(script), "--diffusers-sdxl-script", str(script)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    names = [row["name"] for row in found["rows"]]
    assert names == ["eager b2", "eager b1 checkpointing", "diffusers script b2", "fast b2", "sdxl eager b2",
                     "sdxl eager b1 checkpointing", "sdxl diffusers script b2", "sdxl fast b2"], found["rows"]  # fmt: skip
    assert not any("error" in row for row in found["rows"]), found["rows"]
    # the stand-in's seconds per step are the difference of two short runs' noisy walls: only its type here
    ours = [row for row in found["rows"] if "diffusers script" not in row["name"]]
    assert all(row["s_per_step"] > 0 for row in ours) and set(found["bare"]) == {"2"}
    assert isinstance(found["rows"][2]["s_per_step"], float) and isinstance(
        found["rows"][6]["s_per_step"], float
    )
    assert found["bf16"] == found["bf16"] | {"finite": True, "falls": True, "loads_in_diffusers": True}
    assert found["syncs_per_step"] is None  # counted on CUDA only
    assert "| run | batch | s/step | MFU |" in result.stdout and "bf16 sanity: finite True" in result.stdout
    assert "host synchronisations per training step: –" in result.stdout
    for family in ("sd1", "sdxl"):
        assert f"{family} throughput against diffusers' script at batch 2: eager " in result.stdout
    assert ", fast " in result.stdout
    assert any(line.startswith("fast path: attention SDPA ") for line in found["fast_path"])
