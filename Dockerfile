# syntax=docker/dockerfile:1
# The gateway's container image: built with the toolchain rust-toolchain.toml pins and the
# committed Cargo.lock, run as a non-root user on distroless (glibc, CA certificates, no shell).
# tests/it/deploy.rs keeps this file true to the repository: the toolchain tag, the build command
# (.ci/run's, plus --release), the build inputs .dockerignore lets in, the entrypoint's binary and
# subcommand.
#
#   docker build -t etjanstekort-gateway:dev .
#   docker run --read-only etjanstekort-gateway:dev check-config --config /etc/etjanstekort-gateway/gateway.toml

# The build stage: Debian 12 like the runtime base, so the binary links against the same glibc.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin etjanstekort-gateway \
    && install -D -m 0755 target/release/etjanstekort-gateway /out/etjanstekort-gateway

# The runtime: no shell, no package manager; uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/etjanstekort-gateway /usr/local/bin/etjanstekort-gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# gRPC (server.listen) and the admin listener (admin.listen: /metrics, /livez, /readyz). Neither is
# set to these by default: the configuration (the chart's ConfigMap) sets both. No HEALTHCHECK:
# Kubernetes probes the admin listener.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/etjanstekort-gateway"]
CMD ["serve"]
