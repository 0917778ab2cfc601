# PostgreSQL from Debian's package, for machines without Docker Hub (scripts/compose_prepare.sh
# builds it on the local Debian base). Elsewhere compose uses the official postgres image; this one
# reads the same variables (POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD, PGDATA) and keeps its
# data at the same path, so the compose file is the same for both.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The same numeric user as the official image (999), made before the package would pick one.
# The versions are the ones the machine's configured Debian mirror carries: this image exists
# only where Docker Hub is out of reach, and is rebuilt from that mirror.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER 999:999
EXPOSE 5432
VOLUME /var/lib/postgresql/data
HEALTHCHECK --interval=5s --timeout=3s --retries=20 CMD ["pg_isready", "-h", "127.0.0.1"]
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
