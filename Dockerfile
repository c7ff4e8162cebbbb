# syntax=docker/dockerfile:1
# eds-proxy image. Build from the repository root (the build context is the repository; what
# the builder may see is the allow-list in .dockerignore):
#   docker build -t eds-proxy .                                  # production: no `dev` tools
#   docker build --build-arg FEATURES=server,dev -t eds-proxy:dev-tools .   # + dev issuer/pki
# Run with the configuration mounted read-only at /etc/eds-proxy:
#   docker run -v "$PWD/hapi-compose/proxy:/etc/eds-proxy:ro" -p 8443:8443 eds-proxy
# scripts/docker-context-check.py assembles this context as Docker would and runs the build
# stage's COPY and cargo RUN steps in it, so a file the build needs but the context lacks
# fails CI (README, "Deploying").

# Every base image, pinned by tag, in this one place.
ARG RUST_IMAGE=rust:1.95.0-bookworm
# glibc + libgcc of Debian 12 (what the build stage links against), no shell, no package
# manager, user `nonroot` (65532). The health check is the binary's own `health` subcommand.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# cmake + a C compiler: zlib-ng (flate2) and other native parts of Pingora's dependency tree
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# `server`: the production set (no `dev` subcommand, no token issuer, no certificate
# generator). The compose file builds a second image with `server,dev` for its issuer only.
ARG FEATURES=server
# The whole (allow-listed) context: Cargo.toml names every target it declares (benches too).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release --no-default-features --features "$FEATURES" \
    && mkdir -p out && cp target/release/eds-proxy out/eds-proxy

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /src/out/eds-proxy /usr/local/bin/eds-proxy
# distroless `nonroot`; numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 8443 FHIR (mutual TLS), 9100 admin (/metrics, /healthz, /readyz; keep private),
# 9443 dev token issuer (FEATURES with `dev` only)
EXPOSE 8443 9100 9443
# The config is a mounted file (ConfigMap / bind mount); relative paths in it are resolved
# against its folder, so certificates and the page secret sit beside it (or are absolute).
# The health check asks the admin listener whether the proxy is ready; move it with
# `admin.address` if that changes (Kubernetes uses its own probes instead).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/eds-proxy", "health", "--url", "http://127.0.0.1:9100/readyz"]
# SIGTERM drains (server.grace_period_seconds); give `docker stop -t` a little more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/eds-proxy"]
CMD ["--config", "/etc/eds-proxy/eds-proxy.toml"]
