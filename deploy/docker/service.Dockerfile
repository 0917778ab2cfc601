# The one image recipe of the Python services: gateway, classifier, generator (and the
# one-shot bootstrap, which runs in the classifier image), plus the frontend's small stage.
# Build from the repository root:
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=classifier -t alzprog/classifier .
#   docker build -f deploy/docker/service.Dockerfile --target frontend -t alzprog/frontend .
# Build args:
#   BASE_IMAGE      a Debian-based image with Python 3.11 (default python:3.11-slim; where no
#                   registry is reachable scripts/compose_prepare.sh builds one with debootstrap)
#   VARIANT         the dependencies (deploy/docker/install_deps.sh): cpu (torch from the CPU wheel
#                   index), gpu (CUDA torch + onnxruntime-gpu) or pypi (torch as requirements.lock pins
#                   it, from PyPI, when the CPU index is out of reach) for the model services;
#                   gateway (only what the gateway imports: no torch, onnxruntime or CUDA libraries)
#   LOCAL_INDEX_URLS extra package indexes, space-separated, asked after PyPI
# Every stage before `ARG SERVICE` depends on VARIANT only, so the model services' dependency
# layer (torch and the rest of requirements.lock) is built once and stored once; the library
# comes as a wheel in a layer of its own.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG LOCAL_INDEX_URLS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock deploy/docker/install_deps.sh /src/
RUN bash /src/install_deps.sh "${VARIANT}" /src/requirements.lock

# The shared library as a wheel, apart from the dependencies: a change to the library
# rebuilds a small layer, never the copy of the dependency venv.
FROM build AS library
COPY pyproject.toml README.md /src/
COPY shared /src/shared
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

# The frontend imports nothing from alzprog: starlette, uvicorn and httpx at the lock's pins.
FROM ${BASE_IMAGE} AS frontend-build
ARG LOCAL_INDEX_URLS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock deploy/docker/install_deps.sh /src/
RUN bash /src/install_deps.sh frontend /src/requirements.lock

FROM ${BASE_IMAGE} AS frontend
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FRONTEND_HOST=0.0.0.0 \
    FRONTEND_PORT=8080 \
    GATEWAY_URL=http://gateway:8000
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app
COPY --from=frontend-build /opt/venv /opt/venv
WORKDIR /app
COPY services/frontend/server.py /app/server.py
COPY services/frontend/static /app/static
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('FRONTEND_PORT', '8080'), timeout=2).status == 200 else 1)"]
CMD ["python", "server.py"]

FROM ${BASE_IMAGE} AS service
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    ALZPROG_HOME=/home/app/data \
    GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8000 \
    CLASSIFIER_HOST=0.0.0.0 CLASSIFIER_PORT=8001 \
    GENERATOR_HOST=0.0.0.0 GENERATOR_PORT=8002
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
    && mkdir -p /home/app/data && chown app:app /home/app/data
COPY --from=build /opt/venv /opt/venv
# Installed non-editable from the wheel (no source tree, no build tools at run time).
COPY --from=library /wheels /tmp/wheels
ARG VARIANT=cpu
# The gateway variant must hold no torch; the others must hold torch and onnxruntime.
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && if [ "${VARIANT}" = gateway ]; then \
      python -c "import importlib.util as u, alzprog.preprocessing, alzprog.registry, fastapi, mlflow, redis; from alzprog.quality import report; report(None, None); heavy = [m for m in ('torch', 'torchvision', 'onnxruntime') if u.find_spec(m)]; assert not heavy, heavy; print('deps ok, no torch')"; \
    else \
      python -c "import alzprog.preprocessing, fastapi, onnxruntime, torch; print('deps ok', torch.__version__)"; \
    fi
WORKDIR /app
COPY services/__init__.py /app/services/__init__.py
COPY services/common /app/services/common
# From here on the layers differ per service (only its own folder).
ARG SERVICE=gateway
ENV SERVICE=${SERVICE}
COPY services/${SERVICE} /app/services/${SERVICE}
USER 10001:10001
EXPOSE 8000 8001 8002
# Ready means the models are loaded (classifier, generator) or the back ends answer (gateway).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; s=os.environ['SERVICE']; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ[s.upper() + '_PORT'], timeout=2).status == 200 else 1)"]
CMD ["sh", "-c", "exec python -m \"services.${SERVICE}\""]
