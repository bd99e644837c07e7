#!/usr/bin/env bash
# The main job, end to end on this machine (creates/refreshes .venv first). It tells the audit's story: a model
# that leans on a shortcut and one that does not, and whether the audit tells them apart.
#   1. generate the phantom benchmark (600 cases, 256², MIMIC-CXR-EGD layout) and print its summary: a site
#      marker burned into each film agrees with the label in 90 % of the training cases and is reversed in the
#      test split (the science benchmark's `phantom-reversed`, docs/results.md);
#   2. train and publish to ./registry the baseline (nothing keeps it off the marker) and ActDiff (mask-guided,
#      Viviano et al.: taught to ignore what lies outside the lungs), tiny UNets at 128², the science benchmark's
#      settings and seed 0 (configs/demo/);
#   3. audit both on the reversed test split with the default policy (reports/audit/, history in
#      audit-history.sqlite);
#   4. bring the local stack up on 127.0.0.1 (Triton, the BentoML service, audit watch, Prometheus,
#      Pushgateway) and print the URLs and a curl example. Stop it with `.venv/bin/mimicry stack down`;
#   5. print the verdict (`mimicry audit verdict`): PASS/FAIL per gate family and model, the numbers behind the
#      two shortcut gates (saliency mass on the marker; predictions that change when it is painted out), and
#      a plain-language reading.
# Environment: MIMICRY_N (cases, default 600), MIMICRY_SKIP_STACK=1 to skip step 4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
M=.venv/bin/mimicry
DATA=data/phantom
REG=registry
MODELS=(baseline actdiff)
t0=$SECONDS

echo "== 1/5 phantom benchmark (site marker: 90 % agreement with the label in train, reversed in test)"
$M data phantom --out "$DATA" --n "${MIMICRY_N:-600}" --size 256 --seed 0 --shortcut-corr 0.9 \
  --test-shortcut reversed --overwrite
echo "contact sheet: $DATA/contact_sheet.png"
t1=$SECONDS

echo "== 2/5 training (${MODELS[*]}) → $REG"
for recipe in "${MODELS[@]}"; do
  rm -rf "runs/demo-$recipe"
  $M train --config "configs/demo/$recipe.yaml" --out "runs/demo-$recipe" --publish "$REG" --name "cxr-$recipe"
done
$M registry list --registry "$REG"
t2=$SECONDS

echo "== 3/5 audit on the shortcut-reversed test split (default policy)"
set +e
$M audit run --registry "$REG" "${MODELS[@]/#/--model=cxr-}" --reference "$DATA" \
  --methods gradcam --out reports/audit --no-progress
audit_rc=$?
set -e
t3=$SECONDS
echo "audit exit code: $audit_rc (1 = a policy gate failed, as it should for the baseline: see below)"

if [ "${MIMICRY_SKIP_STACK:-0}" != 1 ]; then
  echo "== 4/5 local stack"
  $M stack up --registry "$REG" --reference "$DATA"
fi

echo "== 5/5 verdict (phantom $((t1 - t0)) s, training $((t2 - t1)) s, audit $((t3 - t2)) s)"
$M audit verdict reports/audit
if [ "$audit_rc" -gt 1 ]; then
  exit "$audit_rc"
fi
