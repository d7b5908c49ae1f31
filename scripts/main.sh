#!/usr/bin/env bash
# The main job: set up .venv, then train an LSTM actor-critic with recurrent PPO on the
# built-in memory task (a few minutes on a 2-core CPU; see README). Arguments are passed
# on to `eqx-lstm-ac train`, e.g. `bash scripts/main.sh --model mlp`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eqx-lstm-ac train "$@"
