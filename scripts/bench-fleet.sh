#!/usr/bin/env bash
# Fleet benchmark (NOT run by CI: it takes about 3 minutes and two busy cores).
#
# Starts the release simulator (INSTANCES instances x SESSIONS sessions, no churn) and the
# release exporter (concurrency 8, 20 requests/s, INTERVAL), lets the first interval (the
# start-up round) pass, then over the second full interval measures:
#   - the exporter's resident memory (VmRSS / VmHWM from /proc),
#   - /metrics latency at 4 concurrent scrapers (wrk, gzip + OpenMetrics Accept) while polls run,
#   - the schedule as the simulator saw it: requests per instance in the interval and the most
#     requests that arrived in any 1 s window, against the rate limit.
# Usage: scripts/bench-fleet.sh   (env: INSTANCES=1000 SESSIONS=2000 INTERVAL=60 RATE=20
#                                   CONCURRENCY=8 WRK_SECONDS=20 BIN= SIM_BIN=)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

INSTANCES=${INSTANCES:-1000}
SESSIONS=${SESSIONS:-2000}
INTERVAL=${INTERVAL:-60}
RATE=${RATE:-20}
CONCURRENCY=${CONCURRENCY:-8}
WRK_SECONDS=${WRK_SECONDS:-20}

for tool in wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-fleet: $tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done

# BIN=path/to/redis-session-exporter measures that binary instead (e.g. an older build, to
# compare side by side in one session); SIM_BIN the simulator (default: BIN).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/redis-session-exporter
fi
SIM_BIN=${SIM_BIN:-$BIN}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
EXP_PORT=$(free_port)

cat >"$WORK/sim.toml" <<TOML
seed = 42
churn = false
sessions = $SESSIONS
TOML
{
  printf '[das]\nendpoint = "http://127.0.0.1:%s"\ntimeout = "20s"\n' "$SIM_PORT"
  printf '[poll]\ninterval = "%ss"\nconcurrency = %s\nmax_requests_per_second = %s\n' "$INTERVAL" "$CONCURRENCY" "$RATE"
  for i in $(seq -f '%05g' 1 "$INSTANCES"); do printf '[[instances]]\nid = "r-fleet%s"\n' "$i"; done
} >"$WORK/exporter.toml"

"$SIM_BIN" simulate --listen "127.0.0.1:$SIM_PORT" --sim-config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SIM_PORT/_sim/stats" >/dev/null && break; sleep 0.1; done

ALIBABA_CLOUD_ACCESS_KEY_ID=sim-access-key-id ALIBABA_CLOUD_ACCESS_KEY_SECRET=sim-access-key-secret-not-real \
  RUST_LOG=warn "$BIN" --config "$WORK/exporter.toml" --listen "127.0.0.1:$EXP_PORT" >"$WORK/exporter.log" 2>&1 &
EXP_PID=$!
PIDS+=("$EXP_PID")
launched=$(date +%s.%N)

echo "bench-fleet: $INSTANCES instances x $SESSIONS sessions, interval ${INTERVAL}s, $RATE req/s, concurrency $CONCURRENCY" >&2
# The start-up round polls every instance once, as fast as the rate limit allows.
startup=$(( INSTANCES / RATE + 5 ))
echo "bench-fleet: start-up round (up to ${startup}s)..." >&2
for _ in $(seq "$startup"); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EXP_PORT/readyz" || true)
  [ "$code" = 200 ] && break
  sleep 1
done
# The grid's intervals start at launch: measure the second one whole (the first holds the
# start-up round).
sleep "$(python3 -c "import time; print(max(0.0, $launched + $INTERVAL + 0.5 - time.time()))")"
curl -fs -X DELETE "http://127.0.0.1:$SIM_PORT/_sim/stats" >/dev/null
t0=$(date +%s.%N)

echo "bench-fleet: measuring over one interval (${INTERVAL}s), wrk for ${WRK_SECONDS}s of it..." >&2
sleep 5
wrk -t2 -c4 -d"${WRK_SECONDS}s" --latency \
  -H 'Accept-Encoding: gzip' \
  -H 'Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2' \
  "http://127.0.0.1:$EXP_PORT/metrics" >"$WORK/wrk.txt"
rest=$(python3 -c "import time; print(max(0.0, $INTERVAL - (time.time() - $t0)))")
sleep "$rest"
curl -fs "http://127.0.0.1:$SIM_PORT/_sim/stats" >"$WORK/stats.json"
grep -E '^(VmRSS|VmHWM)' "/proc/$EXP_PID/status" >"$WORK/rss.txt"
sim_cpu=$(awk '{print ($14+$15)/100}' "/proc/$SIM_PID/stat")
exp_cpu=$(awk '{print ($14+$15)/100}' "/proc/$EXP_PID/stat")
curl -fs -H 'Accept-Encoding: gzip' "http://127.0.0.1:$EXP_PORT/metrics" -o "$WORK/metrics.gz"
curl -fs "http://127.0.0.1:$EXP_PORT/metrics" -o "$WORK/metrics.txt"

python3 - "$WORK" "$INSTANCES" "$RATE" "$INTERVAL" "$sim_cpu" "$exp_cpu" <<'PY'
import json, os, re, sys, collections
work, n, rate, interval, sim_cpu, exp_cpu = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
rss = dict(l.split(":") for l in open(f"{work}/rss.txt").read().splitlines())
wrk = open(f"{work}/wrk.txt").read()
p = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", wrk, re.M))
reqs = re.search(r"Requests/sec:\s+(\S+)", wrk).group(1)
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
st = json.load(open(f"{work}/stats.json"))
per = [st["requests"].get(f"r-fleet{i:05d}", 0) for i in range(1, n + 1)]
dist = collections.Counter(per)
arr = sorted(st["arrivals_ms"])
j, best = 0, 0
for i, t in enumerate(arr):
    while arr[j] <= t - 1000:
        j += 1
    best = max(best, i - j + 1)
print("== bench-fleet results")
print(f"exporter RSS: {rss['VmRSS'].strip()} (peak {rss['VmHWM'].strip()})")
print(f"/metrics gzip+OpenMetrics, 4 connections: p50 {p.get('50')} p90 {p.get('90')} p99 {p.get('99')}, {reqs} req/s, non-2xx {errs.group(1) if errs else 0}")
print(f"exposition: {os.path.getsize(work + '/metrics.txt')/1e6:.2f} MB plain, {os.path.getsize(work + '/metrics.gz')/1e6:.2f} MB gzip")
print(f"schedule over one interval ({interval:.0f}s): {len(arr)} requests; instances by requests seen: {dict(sorted(dist.items()))}")
print(f"max requests in any 1 s window: {best} (limit {rate:g}/s); mean {len(arr)/interval:.1f}/s")
print(f"CPU seconds since start: exporter {exp_cpu}, simulator {sim_cpu}")
PY
