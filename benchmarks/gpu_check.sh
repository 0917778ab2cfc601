#!/usr/bin/env bash
# GPU check of issue 7: run once on a CUDA machine from the repository root.
#   CUDA-provider ONNX Runtime inference (latency, throughput) for the classifier (EfficientNet-B4
#   at 256) and the production generator, PyTorch CUDA fp32 / bf16 for comparison, and AMP
#   training images/s of the `full` presets. Prints a table; writes $OUT/gpu_check.json.
# Uses the machine's python3 (it must have torch, torchvision, onnx, onnxruntime, safetensors,
# pyyaml, pandas); the project library is taken from ./shared, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PY="${PYTHON:-python3}"
PYTHONPATH="$PWD/shared${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m alzprog.bench.gpu
