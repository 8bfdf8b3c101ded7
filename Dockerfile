# syntax=docker/dockerfile:1.7
#
# identity-link-worker image: the worker and mos-sim (the MonetizationOS endpoint
# simulator) in one small, non-root, shell-less image.
#
#   docker build -t identity-link-worker .
#   docker run --rm identity-link-worker identity-link-worker check-config
#   docker run --rm identity-link-worker mos-sim --addr 0.0.0.0:8080

ARG RUST_VERSION=1

# ---- build ----------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Strip symbols from the release binaries: a smaller image; a panic still
# prints its message and source location.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

COPY . .

# The registry and target caches survive between builds (BuildKit); the binaries
# are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features -p identity-link-worker -p mos-sim \
 && mkdir -p /out \
 && cp target/release/identity-link-worker target/release/mos-sim /out/

# ---- runtime --------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates (TLS to MonetizationOS and amqps://),
# tzdata; no shell, no package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="identity-link-worker" \
      org.opencontainers.image.description="Links anonymous to authenticated identities in MonetizationOS from RabbitMQ auth events" \
      org.opencontainers.image.licenses="UNLICENSED"

COPY --from=builder /out/identity-link-worker /out/mos-sim /usr/local/bin/

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

ENV LINKER_HTTP_ADDR=0.0.0.0:9464
# /metrics, /healthz, /readyz
EXPOSE 9464

# `healthcheck` GETs http://127.0.0.1:9464/healthz and exits 0 on 200, else 1.
# (For mos-sim, docker-compose.yml points it at /_sim/healthz on :8080.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["identity-link-worker", "healthcheck"]

# SIGTERM: stop taking deliveries, finish in-flight work within
# LINKER_SHUTDOWN_GRACE (20s), exit 0. Give `docker stop -t 30`.
STOPSIGNAL SIGTERM
CMD ["identity-link-worker", "run"]
