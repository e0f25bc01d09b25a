# syntax=docker/dockerfile:1
#
# redis-session-exporter: a static (musl) binary on a distroless base.
#   docker build --platform linux/amd64 -t redis-session-exporter .
#   docker run --rm -p 10379:10379 \
#     -v "$PWD/config.toml:/etc/redis-session-exporter/config.toml:ro" redis-session-exporter
# The image holds no shell and runs as UID/GID 65532 ("nonroot"); it works with a
# read-only root file system. It is built for x86_64 only.

# ---- build -------------------------------------------------------------------
# Debian 12 (bookworm) pinned so that the musl-tools version below stays valid:
# bump both together.
FROM rust:1-bookworm AS builder

# musl-gcc compiles the C parts of the dependencies (ring) for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# BuildKit cache mounts keep the crate registry and the target directory between
# builds; the binary is copied out of the cached target directory for the next
# stage. Symbols are stripped: the image only needs the binary.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/redis-session-exporter \
      /out/redis-session-exporter

# ---- runtime -----------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

COPY --from=builder /out/redis-session-exporter /usr/local/bin/redis-session-exporter

USER 65532:65532
EXPOSE 10379
ENTRYPOINT ["/usr/local/bin/redis-session-exporter"]
CMD ["--config", "/etc/redis-session-exporter/config.toml"]
