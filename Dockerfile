# syntax=docker/dockerfile:1.7
#
# Two images, each small, non-root and shell-less:
#
#   worker   (the default: the last stage) identity-link-worker alone, the
#            production image; built without the `demo` feature, so it carries
#            no simulator code either.
#   mos-sim  the MonetizationOS endpoint simulator, for docker-compose.yml and
#            tests only; never deployed.
#
#   docker build -t identity-link-worker .
#   docker build --target mos-sim -t mos-sim .
#   docker run --rm -d --name mos-sim -e MOS_SIM_KEY=k -p 127.0.0.1:8080:8080 mos-sim
#
# check-config needs the endpoint URL and a key (without them it exits 2 naming
# the variable) and a broker: with --network host the container reaches
# RabbitMQ on the host's 127.0.0.1:5672 (the default LINKER_AMQP_URL, where
# guest may log in) and the simulator above. Exit 0: broker, topology,
# endpoint and key checked (scripts/deploy-check/live_check.py runs this
# command's variables against the binary):
#
#   docker run --rm --network host \
#     -e LINKER_MOS_ENDPOINT_URL=http://127.0.0.1:8080/api/v1/envs/local/endpoints/link-identities \
#     -e LINKER_MOS_SECRET_KEY=k \
#     identity-link-worker identity-link-worker check-config
#
# (In production the key comes from a file, LINKER_MOS_SECRET_KEY_FILE, as the
# Kubernetes Deployment mounts it; the image runs as uid 65532, so the file
# must be readable by it.)

ARG RUST_VERSION=1

# ---- sources ----------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Strip symbols from the release binaries: smaller images; a panic still
# prints its message and source location.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

COPY . .

# ---- build: the simulator (only for the mos-sim target) ---------------------------
# BuildKit builds only the stages the requested target needs, so a plain
# `docker build .` never compiles this one.
FROM builder AS build-mos-sim
# The registry and target caches survive between builds (BuildKit); the binary
# is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p mos-sim \
 && mkdir -p /out \
 && cp target/release/mos-sim /out/

# ---- build: the worker ------------------------------------------------------------
FROM builder AS build-worker
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features -p identity-link-worker \
 && mkdir -p /out \
 && cp target/release/identity-link-worker /out/

# ---- runtime: mos-sim -------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates, tzdata; no shell, no package
# manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS mos-sim

LABEL org.opencontainers.image.title="mos-sim" \
      org.opencontainers.image.description="Simulator of the MonetizationOS Link Identities endpoint, for local stacks and tests" \
      org.opencontainers.image.licenses="UNLICENSED"

COPY --from=build-mos-sim /out/mos-sim /usr/local/bin/

USER 65532:65532

# The link route and /healthz; the /_sim/* control routes only with
# MOS_SIM_CONTROL=1 (they have no auth).
ENV MOS_SIM_ADDR=0.0.0.0:8080
EXPOSE 8080

# `mos-sim healthcheck` GETs /healthz on the port of MOS_SIM_ADDR (always
# served, control routes or not) and exits 0 on 200, else 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
  CMD ["mos-sim", "healthcheck"]

STOPSIGNAL SIGTERM
CMD ["mos-sim"]

# ---- runtime: worker (the default target) -----------------------------------------
# distroless/cc: glibc, libgcc, CA certificates (TLS to MonetizationOS and amqps://),
# tzdata; no shell, no package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS worker

LABEL org.opencontainers.image.title="identity-link-worker" \
      org.opencontainers.image.description="Links anonymous to authenticated identities in MonetizationOS from RabbitMQ auth events" \
      org.opencontainers.image.licenses="UNLICENSED"

COPY --from=build-worker /out/identity-link-worker /usr/local/bin/

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

ENV LINKER_HTTP_ADDR=0.0.0.0:9464
# /metrics, /healthz, /readyz
EXPOSE 9464

# `healthcheck` GETs http://127.0.0.1:9464/healthz and exits 0 on 200, else 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["identity-link-worker", "healthcheck"]

# SIGTERM: stop taking deliveries, finish in-flight work within
# LINKER_SHUTDOWN_GRACE (20s), exit 0. Give `docker stop -t 30`.
STOPSIGNAL SIGTERM
CMD ["identity-link-worker", "run"]
