#!/usr/bin/env bash
# The tests: set up .venv, then run pytest (runtime shape checks on, see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
