#!/usr/bin/env bash
# The main job, end to end on this machine (creates/refreshes .venv first):
#   1. generate the phantom benchmark (600 cases, 256², MIMIC-CXR-EGD layout) and print its summary;
#   2. train the baseline and the explanation ensemble (tiny UNets, 128²) and publish them to ./registry;
#   3. audit both against the phantom's gaze and masks (reports/audit/, history in audit-history.sqlite);
#   4. bring the local stack up on 127.0.0.1 (Triton, the BentoML service, audit watch, Prometheus,
#      Pushgateway) and print the URLs and a curl example. Stop it with `.venv/bin/mimicry stack down`.
# Environment: MIMICRY_N (cases, default 600), MIMICRY_SKIP_STACK=1 to stop after the audit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
M=.venv/bin/mimicry
DATA=data/phantom
REG=registry

echo "== 1/4 phantom benchmark"
$M data phantom --out "$DATA" --n "${MIMICRY_N:-600}" --size 256 --seed 0 --overwrite
echo "contact sheet: $DATA/contact_sheet.png"

echo "== 2/4 training (baseline, explanation ensemble) → $REG"
for recipe in baseline explanation_ensemble; do
  rm -rf "runs/demo-$recipe"
  $M train --config "configs/demo/$recipe.yaml" --out "runs/demo-$recipe" --publish "$REG" --name "cxr-$recipe"
done
$M registry list --registry "$REG"

echo "== 3/4 audit"
set +e
$M audit run --registry "$REG" --model cxr-baseline --model cxr-explanation_ensemble --reference "$DATA" \
  --methods gradcam --out reports/audit --no-progress
audit_rc=$?
set -e
echo "audit exit code: $audit_rc (1 = a policy gate failed: see reports/audit/summary.md)"

if [ "${MIMICRY_SKIP_STACK:-0}" = 1 ]; then
  exit 0
fi
echo "== 4/4 local stack"
$M stack up --registry "$REG" --reference "$DATA"
