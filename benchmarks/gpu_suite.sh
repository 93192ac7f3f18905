#!/usr/bin/env bash
# The GPU checks in one call (about 8 minutes on one H100): the `gpu`-marked tests, then the GPU
# benchmark tables. Run on a machine with an NVIDIA GPU, onnxruntime-gpu and (for the TensorRT
# tests) TensorRT installed:  bash benchmarks/gpu_suite.sh [images]
set -euo pipefail
cd "$(dirname "$0")/.."
images="${1:-256}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider || echo "gpu tests: exit $?"
timeout 300 python benchmarks/bench_gpu.py --images "$images"
