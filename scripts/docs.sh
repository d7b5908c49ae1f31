#!/usr/bin/env bash
# The documentation site: set up .venv with the docs extra, then
#   bash scripts/docs.sh            build it into site/ with `mkdocs build --strict`
#   bash scripts/docs.sh serve      build and serve it on http://127.0.0.1:8000 (extra args go to mkdocs serve)
#   bash scripts/docs.sh figures    redraw the pictures in docs/images/ with the scripts in docs/scripts/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
stamp=.venv/.eqx_lstm_ac-docs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
  || ! .venv/bin/python -c "import mkdocs, material, mkdocstrings_handlers.python, pymdownx, mathjax, matplotlib" 2>/dev/null; then
  .venv/bin/python -m pip install -q -e ".[dev,docs]"
  touch "$stamp"
fi
export NO_MKDOCS_2_WARNING=1
case "${1:-build}" in
  build) exec .venv/bin/mkdocs build --strict ;;
  serve) shift; exec .venv/bin/mkdocs serve --strict "$@" ;;
  figures) for f in docs/scripts/*.py; do .venv/bin/python "$f"; done ;;
  *) echo "usage: bash scripts/docs.sh [build|serve|figures]" >&2; exit 2 ;;
esac
