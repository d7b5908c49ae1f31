#!/usr/bin/env bash
# Create .venv (once) and install the project with its development extras and the `train`
# extra (matplotlib, for the learning-curve PNG) into it. More extras: EXTRAS=gymnax,bench-train.
# Re-running is cheap: pip only installs what changed in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.eqx_lstm_ac-installed
extras="dev,train${EXTRAS:+,$EXTRAS}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$extras" > "$stamp"
fi
