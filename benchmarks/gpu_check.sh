#!/usr/bin/env bash
# The device check of issue 13: benchmarks/gpu_check.py on a GPU (or --smoke on a CPU, as the tests run it).
#   benchmarks/gpu_check.sh [--smoke] [--out FILE]
# On the GPU machine, python3 holds CUDA torch, transformers, peft and safetensors; what its image
# lacks (diffusers) travels as wheels in .whl/ (benchmarks/README.md says how) and is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import diffusers" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$py" benchmarks/gpu_check.py "$@"
