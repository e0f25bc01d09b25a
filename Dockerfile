# syntax=docker/dockerfile:1
#
# redis-session-exporter: a static (musl) binary on a distroless base, for linux/amd64 and
# linux/arm64. Built with BuildKit (the default builder of current Docker):
#
#   docker build -t redis-session-exporter .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/redis-session-exporter:TAG --push .
#   docker run --rm -p 10379:10379 redis-session-exporter demo --listen 0.0.0.0:10379
#
# The builder runs on the build machine's own platform and cross-compiles for the target one
# (scripts/build-static.sh: cargo-zigbuild), so an arm64 image needs no emulation. The base
# images are build arguments, for mirrors (docs/deploy.md has an example), e.g.
#   --build-arg BUILDER_IMAGE=registry.cn-hangzhou.aliyuncs.com/<namespace>/rust:1-bookworm
# The image holds no shell and runs as UID/GID 65532 ("nonroot"); it works with a read-only
# root file system. Without arguments it prints its usage.

ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# ---- build -------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS builder

# The architecture to build for (set by BuildKit from --platform).
ARG TARGETARCH
# PyPI index for Zig and cargo-zigbuild, e.g. https://mirrors.aliyun.com/pypi/simple/
ARG PIP_INDEX_URL=https://pypi.org/simple

# pip installs Zig (the cross C compiler and linker) and cargo-zigbuild; bookworm's
# python3-pip version is pinned: bump it with the builder image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip=23.0.1+dfsg-1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# BuildKit cache mounts keep the crate registry and the target directory between builds; the
# binary is copied out of the cached target directory for the next stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    PIP_INDEX_URL="${PIP_INDEX_URL}" bash scripts/build-static.sh /out "${TARGETARCH}" \
 && install -D -m 0755 "/out/${TARGETARCH}/redis-session-exporter" /out/bin/redis-session-exporter

# ---- runtime -----------------------------------------------------------------
# hadolint ignore=DL3006
FROM ${RUNTIME_IMAGE}

COPY --from=builder /out/bin/redis-session-exporter /usr/local/bin/redis-session-exporter

USER 65532:65532
EXPOSE 10379
ENTRYPOINT ["/usr/local/bin/redis-session-exporter"]
# No configuration is baked in: the default prints the usage. Run it with
#   --config /etc/redis-session-exporter/config.toml   (mount the file there), or
#   demo --listen 0.0.0.0:10379
CMD ["--help"]
