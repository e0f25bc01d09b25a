#!/usr/bin/env bash
# Builds static (musl) release binaries of redis-session-exporter for Linux, for the
# container image and for anyone who wants a binary without a libc dependency:
#
#   scripts/build-static.sh DEST ARCH...      ARCH: amd64, arm64 (Docker's TARGETARCH names)
#   -> DEST/<ARCH>/redis-session-exporter     stripped, statically linked
#
# Cross-compiles from any Linux host with cargo-zigbuild, which uses Zig as the C compiler and
# linker for every target (ring's C code included), so no cross toolchain, musl-gcc or
# emulation is needed. The Dockerfile runs this script in its builder stage; tests/e2e/image.rs
# runs it too, for both architectures, and checks the binaries with file and readelf.
#
# Installs what is missing: the Rust targets (rustup), and the PyPI packages ziglang and
# cargo-zigbuild (pip; PIP_INDEX_URL selects a mirror). All targets are built by one cargo run,
# which shares the host-side build scripts and proc-macros between them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ $# -lt 2 ]; then
  echo "usage: $0 DEST ARCH... (ARCH: amd64 or arm64)" >&2
  exit 2
fi
dest=$1
shift

# The versions the project is tested with.
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1

targets=()
for arch in "$@"; do
  case "$arch" in
    amd64) targets+=(x86_64-unknown-linux-musl) ;;
    arm64) targets+=(aarch64-unknown-linux-musl) ;;
    *)
      echo "build-static: unknown architecture $arch (amd64 or arm64)" >&2
      exit 2
      ;;
  esac
done

PY=${PYTHON:-python3}
# Where pip puts console scripts (cargo-zigbuild), for a fresh install too.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$("$PY" -m site --user-base)/bin:$PATH"
export PATH

if ! "$PY" -m ziglang version >/dev/null 2>&1 || ! command -v cargo-zigbuild >/dev/null 2>&1; then
  echo "build-static: installing ziglang and cargo-zigbuild (pip)" >&2
  pkgs=("ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION")
  "$PY" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}" ||
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages "${pkgs[@]}"
  hash -r
fi

if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup target list --installed)
  for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
      echo "build-static: installing the Rust target $t (rustup)" >&2
      rustup target add "$t"
    fi
  done
fi

args=()
for t in "${targets[@]}"; do args+=(--target "$t"); done
# Symbols stripped: the image only needs the binary (about a third of the size).
CARGO_PROFILE_RELEASE_STRIP=symbols cargo zigbuild --release --locked "${args[@]}"

target_dir=${CARGO_TARGET_DIR:-target}
i=0
for arch in "$@"; do
  install -D -m 0755 "$target_dir/${targets[$i]}/release/redis-session-exporter" \
    "$dest/$arch/redis-session-exporter"
  echo "build-static: $dest/$arch/redis-session-exporter"
  i=$((i + 1))
done
