#!/usr/bin/env bash
# Create .venv (once) and install the project with its development extras into it.
# Re-running is cheap: pip only installs what changed in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.eqx_lstm_ac-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[dev${EXTRAS:+,$EXTRAS}]"
  touch "$stamp"
fi
