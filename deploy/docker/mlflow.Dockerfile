# MLflow tracking server + model registry with a PostgreSQL backend store (psycopg 3); artifacts are
# served through the server (--serve-artifacts) from a volume at /mlartifacts.
# Build from the repository root:  docker build -f deploy/docker/mlflow.Dockerfile -t alzprog/mlflow .

# BASE_IMAGE and LOCAL_INDEX_URLS: as in service.Dockerfile.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG LOCAL_INDEX_URLS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock deploy/docker/install_deps.sh /src/
# mlflow at the project's pin, with psycopg 3 for the PostgreSQL backend store.
RUN bash /src/install_deps.sh mlflow /src/requirements.lock

FROM ${BASE_IMAGE} AS runtime
# MLflow 3 refuses Host headers it does not know (DNS-rebinding guard): allow the service
# name in compose (mlflow:5000) and in Kubernetes (mlflow.<namespace>.svc...); /health is exempt.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    MLFLOW_SERVER_ALLOWED_HOSTS=mlflow,mlflow:5000,mlflow.*,localhost,localhost:*,127.0.0.1,127.0.0.1:*
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --create-home --home-dir /home/mlflow mlflow \
    && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2).status == 200 else 1)"]
# The backend store URI comes from the environment (it carries the database password); the
# other defaults are the container's and may be overridden (tests run this exact line locally).
CMD ["sh", "-c", "exec mlflow server --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination \"${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}\" --serve-artifacts --host \"${MLFLOW_HOST:-0.0.0.0}\" --port \"${MLFLOW_PORT:-5000}\" --workers \"${MLFLOW_WORKERS:-2}\""]
