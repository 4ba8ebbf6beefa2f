"""benchmarks/gpu_check.sh --smoke: the device check's own code, on the CPU with the tiny model, so
that it cannot rot between the sessions that have a GPU."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~15 s: five short training runs, the bare loop and the bf16 sanity run
def test_gpu_check_smoke_runs_every_measurement(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    names = [row["name"] for row in found["rows"]]
    assert names == ["eager b2", "eager b1 checkpointing", "fast b2"]
    assert all(row["s_per_step"] > 0 for row in found["rows"]) and set(found["bare"]) == {"2"}
    assert found["bf16"] == found["bf16"] | {"finite": True, "falls": True, "loads_in_diffusers": True}
    assert found["syncs_per_step"] is None  # counted on CUDA only
    assert "| run | batch | s/step | MFU |" in result.stdout and "bf16 sanity: finite True" in result.stdout
    assert "host synchronisations per training step: –" in result.stdout
    assert any(line.startswith("fast path: attention SDPA ") for line in found["fast_path"])
