# Redis from Debian's package, for machines without Docker Hub (scripts/compose_prepare.sh
# builds it on the local Debian base). Elsewhere compose uses the official redis image.
# The compose file passes the whole command line (redis-server ...), as it does to the official image.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The same numeric user as the official image (999), made before the package would pick one.
# The versions are the ones the machine's configured Debian mirror carries: this image exists
# only where Docker Hub is out of reach, and is rebuilt from that mirror.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /bin/sh redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER 999:999
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
# As the official image's entrypoint does: without a config file Redis runs in protected mode
# and refuses every client that is not on loopback, so other containers could not use it.
ENTRYPOINT ["sh", "-c", "if [ \"$1\" = redis-server ]; then shift; exec redis-server \"$@\" --protected-mode no; fi; exec \"$@\"", "--"]
CMD ["redis-server"]
