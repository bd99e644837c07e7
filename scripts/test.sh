#!/usr/bin/env bash
# Set up (or refresh) .venv and run the full test suite, lint and layer contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
