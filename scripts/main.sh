#!/usr/bin/env bash
# The main job: set up .venv, then run the quickstart (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart.py "$@"
