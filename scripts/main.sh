#!/usr/bin/env bash
# Set up (or refresh) .venv and run the main job: generate the phantom benchmark (600 cases, 256²),
# print its summary and write its contact sheet. Later stages (train, audit, serve) extend this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${MIMICRY_DATA:-data/phantom}
.venv/bin/mimicry data phantom --out "$OUT" --n "${MIMICRY_N:-600}" --size 256 --seed 0 --overwrite
.venv/bin/mimicry data summary "$OUT"
echo "contact sheet: $OUT/contact_sheet.png"
