#!/usr/bin/env bash
# Fetch (on a networked machine) the pure-Python / manylinux wheels bench/gpu_check.sh needs on the GPU
# machine, whose image has python 3.12 with CUDA torch, onnx, onnxruntime, numpy, safetensors and OpenCV but
# not these. Writes .whl/ (ignored by git; keep it under the device tool's 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" requirements.lock | head -1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "$(pin monai)" "$(pin pydantic)" "$(pin pydantic_core)" "$(pin pydantic-settings)" \
  "$(pin annotated-types)" "$(pin typing-inspection)" "$(pin python-dotenv)" "$(pin pylibjpeg-openjpeg)"
du -sh .whl
