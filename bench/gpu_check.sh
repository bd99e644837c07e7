#!/usr/bin/env bash
# The GPU path in one call (a few minutes): run from the repository root on a machine with CUDA.
#
# What runs (bench/bench_gpu.py, JSON to $OUT/gpu.json or ./gpu.json):
#   * nvidia-smi's view of the GPU;
#   * DenseNet121 224² predict + Grad-CAM: the torch twin on CUDA (fp32, bf16, bf16 channels-last) and the
#     registry's ONNX graph through ONNX Runtime with the CUDA (and, when offered, TensorRT FP16) provider,
#     providers read back from the session;
#   * full-size (3000x2500) JPEG 2000 decode: OpenJPEG on the CPU and nvImageCodec on the GPU when present.
#
# Python packages the machine lacks travel as wheels in .whl (prepared on a networked machine with
# `bash bench/gpu_wheels.sh`; python 3.12 manylinux): they are installed with --no-index into /tmp/site.
# onnxruntime-gpu and a CUDA torch are not carried (their wheels are hundreds of MB): the script measures
# what the machine has and reports each missing backend as skipped with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: no GPU"
export PYTHONUNBUFFERED=1
timeout 420 python3 bench/bench_gpu.py --device auto --batch "${GPU_BATCH:-256}" --iters "${GPU_ITERS:-20}" \
  --out "$out/gpu.json"
