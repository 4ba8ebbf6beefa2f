#!/usr/bin/env bash
# The long toy bench (issues 12 and 22; hours on 2 cores), resumable: run it again and it continues
# where it stopped (finished runs kept, an interrupted one from its last checkpoint, scores reused).
# 20 runs: 2 methods x 2 ranks x 5 seeds; stopping rules are tuned on seeds 0-2 and reported on the
# held-out seeds 3-4; every checkpoint's ground truth on 96 truth prompts.
# Work folder: runs/bench-long (checkpoints, ~2.5 GB; not committed). When it finishes, the report,
# plots and results.json are copied here.
#   nohup benchmarks/toy/long/run.sh > runs/bench-long.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=runs/bench-long
settings=(--methods lora,trilora --ranks 4,16 --seeds 5 --tune-seeds 3 --steps 2000 --eval-every 100 --prompts 32
          --truth-prompts 96 --train-images 10 --train-colours 2 --signal-prompts 16 --lr 1e-3 --patience 5
          --output "$out")
resume=()
[ -f "$out/settings.toml" ] && resume=(--resume)
OMP_NUM_THREADS=2 .venv/bin/python -m trilora bench toy "${settings[@]}" "${resume[@]}"
mkdir -p benchmarks/toy/long
cp -r "$out/report.md" "$out/results.json" "$out/plots" benchmarks/toy/long/
