#!/usr/bin/env bash
# The benchmark suite: set up .venv with the `bench` extra (flax, a CPU build of torch,
# matplotlib), run eqx_lstm_ac against flax nnx and PyTorch in one process, print the
# table of ratios, and (full runs) regenerate docs/benchmarks.md and its plot.
#   bash scripts/bench.sh            # full grid (a few minutes on 2 cores)
#   bash scripts/bench.sh --quick    # small grid, prints only (results/cpu-quick.json)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=bench bash scripts/setup.sh
.venv/bin/python -m benchmarks.run "$@"
case " $* " in
  *" --quick "*|*" --out "*) ;;
  *) .venv/bin/python -m benchmarks.report benchmarks/results/cpu.json ;;
esac
