#!/usr/bin/env bash
# End-to-end CPU per poll (NOT run by CI): the release exporter against the simulator serving one
# corpus member (src/das/corpus.rs), next to the official Python SDK (alibabacloud_das20200116)
# making the same signed call and building the same figures with prometheus_client, in one run.
#
# Exporter side: INSTANCES instances, all answered with the member's bytes, polled every second;
# its process CPU (utime + stime from /proc/PID/stat) over WINDOW seconds, divided by the polls
# the simulator answered in that window. Everything the daemon does per poll is in the figure:
# signing, receiving the body, decoding, folding, publishing and encoding the instance's block.
# SDK side: scripts/bench_poll_sdk.py, SDK_POLLS polls after a warm-up, its own process CPU.
# The exporter is measured in two windows, before and after the SDK run.
#
# Usage: scripts/bench-poll-cpu.sh  (env: MEMBER=realistic/20000 INSTANCES=8 WINDOW=30
#                                    SDK_POLLS=20; SDK_PYTHON=python3 with the SDK installed,
#                                    else a venv is made under target/ and the SDK pip-installed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBER=${MEMBER:-realistic/20000}
INSTANCES=${INSTANCES:-8}
WINDOW=${WINDOW:-30}
SDK_POLLS=${SDK_POLLS:-20}

for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-poll-cpu: $tool is missing" >&2; exit 1; }
done

if [ -z "${SDK_PYTHON:-}" ]; then
  venv=target/sdk-venv
  if [ ! -x "$venv/bin/python" ]; then
    echo "bench-poll-cpu: installing the SDK into $venv (pip)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      'alibabacloud-das20200116>=4,<5' 'prometheus_client>=0.20'
  fi
  SDK_PYTHON=$venv/bin/python
fi

# The bench build makes the release exporter too (same optimisation settings, the bench
# profile), so one build serves both the corpus writer and the daemon.
cargo bench --quiet --bench decode --no-run
BIN=target/release/redis-session-exporter
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The bench binary writes the member (same generator, same seed as the decode benchmark).
CORPUS_WRITE="$MEMBER:$WORK/body.json" cargo bench --quiet --bench decode >/dev/null
sessions=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['Data']['Sessions']))" "$WORK/body.json")
bytes=$(stat -c %s "$WORK/body.json")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
EXP_PORT=$(free_port)
printf 'seed = 42\nchurn = false\nbody_file = "%s"\n' "$WORK/body.json" >"$WORK/sim.toml"
{
  printf '[das]\nendpoint = "http://127.0.0.1:%s"\ntimeout = "20s"\n' "$SIM_PORT"
  printf '[poll]\ninterval = "1s"\nconcurrency = 2\nmax_requests_per_second = 1000\n'
  for i in $(seq -f '%06g' 1 "$INSTANCES"); do printf '[[instances]]\nid = "r-bench-%s"\n' "$i"; done
} >"$WORK/exporter.toml"

"$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --sim-config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SIM_PORT/_sim/stats" >/dev/null && break; sleep 0.1; done

export ALIBABA_CLOUD_ACCESS_KEY_ID=sim-access-key-id
export ALIBABA_CLOUD_ACCESS_KEY_SECRET=sim-access-key-secret-not-real

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
requests() { curl -fs "http://127.0.0.1:$SIM_PORT/_sim/stats" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["requests"].values()))'; }
hz=$(getconf CLK_TCK)

# One exporter window: start the daemon, let it settle, measure WINDOW seconds, stop it.
exporter_window() {
  RUST_LOG=warn "$BIN" --config "$WORK/exporter.toml" --listen "127.0.0.1:$EXP_PORT" >"$WORK/exporter.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EXP_PORT/readyz" || true)" = 200 ] && break
    sleep 0.2
  done
  sleep 3
  local c0 r0 c1 r1
  c0=$(cpu_ticks "$pid"); r0=$(requests)
  sleep "$WINDOW"
  c1=$(cpu_ticks "$pid"); r1=$(requests)
  # The figures must be the member's: every instance up with all its sessions.
  curl -fs "http://127.0.0.1:$EXP_PORT/metrics" >"$WORK/metrics.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$WORK/metrics.txt" "$sessions" "$INSTANCES" <<'PY' >&2
import sys
text, want, instances = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
got = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("redis_sessions{"))
assert got == want * instances, f"exporter reports {got} sessions, expected {want} x {instances}"
PY
  python3 -c "import sys; c,r,hz=float(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); print(f'{c/hz/r*1e3:.2f} {r}')" \
    "$((c1 - c0))" "$((r1 - r0))" "$hz"
}

echo "bench-poll-cpu: $MEMBER ($sessions sessions, $bytes bytes), $INSTANCES instances every 1s, ${WINDOW}s windows" >&2
read -r exp1 polls1 < <(exporter_window)
echo "bench-poll-cpu: exporter window 1: $exp1 ms CPU per poll over $polls1 polls" >&2
sdk=$("$SDK_PYTHON" scripts/bench_poll_sdk.py --endpoint "127.0.0.1:$SIM_PORT" --polls "$SDK_POLLS")
echo "bench-poll-cpu: sdk: $sdk" >&2
read -r exp2 polls2 < <(exporter_window)
echo "bench-poll-cpu: exporter window 2: $exp2 ms CPU per poll over $polls2 polls" >&2

python3 - "$exp1" "$exp2" "$sdk" "$MEMBER" "$sessions" "$bytes" <<'PY'
import json, sys
e1, e2, sdk = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
member, sessions, size = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
assert sdk["sessions"] == sessions, f"SDK folded {sdk['sessions']} sessions, expected {sessions}"
exporter = min(e1, e2)
print(f"member {member}: {sessions} sessions, {size / 1e6:.1f} MB")
print(f"exporter CPU per poll: {e1:.2f} ms / {e2:.2f} ms (two windows; best {exporter:.2f})")
print(f"SDK + prometheus_client CPU per poll: {sdk['cpu_ms_per_poll']:.1f} ms "
      f"(signing alone: v1 HMAC-SHA1 {sdk['sign_v1_us']} us, ACS3-HMAC-SHA256 {sdk['sign_acs3_us']} us)")
print(f"ratio SDK / exporter: {sdk['cpu_ms_per_poll'] / exporter:.1f}x")
PY
