#!/usr/bin/env bash
# Create or refresh .venv with everything the project needs, in ONE pip resolve:
# pyproject's ranges + requirements.lock's exact pins as constraints.
# Skips the resolve when pyproject.toml and requirements.lock are unchanged since the last good install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.mimicry-install-stamp
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import mimicry, mimicry_cli' 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet -c requirements.lock -e '.[dev]'
echo "$want" > "$stamp"
