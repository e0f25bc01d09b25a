#!/usr/bin/env python3
"""The official-SDK side of scripts/bench-poll-cpu.sh: polls GetRedisAllSession through the Alibaba
Cloud Python SDK (alibabacloud_das20200116) and builds the exporter's per-instance figures with
prometheus_client, then prints the process CPU it spent per poll as one JSON line.

Each poll does what the exporter does per poll: the signed call, reading and decoding the answer
(the SDK's own json + model classes), folding the sessions into the same breakdowns, caps and
histograms, and rendering the families once (prometheus_client's text exposition).

Signing: the SDK signs with ACS3-HMAC-SHA256 (an Authorization header) unless
signature_algorithm is "v2", which makes it sign RPC calls the way this exporter does (v1
HMAC-SHA1 in the query), the form the project's simulator checks. The benchmark uses "v2"; the
cost of both signatures is measured apart (--sign-only) to show that the choice does not move the
figure.
"""

import argparse
import json
import os
import sys
import time

from alibabacloud_das20200116 import models
from alibabacloud_das20200116.client import Client
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_tea_openapi.utils_models import Config
from darabonba.runtime import RuntimeOptions
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily

# The exporter's buckets and caps (src/snapshot.rs, [limits] defaults).
IDLE_BOUNDS = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400]
AGE_BOUNDS = [60, 300, 1800, 3600, 21600, 86400, 604800, 2592000]
BUFFER_BOUNDS = [0, 1024, 16384, 65536, 1048576, 16777216]
FLAGS = "AbcdeiMNOPrSuUxtTRB"
MAX_SOURCES, MAX_COMMANDS, MAX_NAMES = 50, 100, 50


def cpu_seconds():
    """utime + stime of this process, from /proc (as the shell side reads the exporter's)."""
    with open("/proc/self/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lenient_int(v):
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None


def size(v):
    n = lenient_int(v)
    return max(n, 0) if n is not None else 0


def capped(counts, n):
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept, rest = items[:n], items[n:]
    out = dict(kept)
    if rest:
        out["other"] = out.get("other", 0) + sum(c for _, c in rest)
    return out


def histogram(bounds):
    return {"bounds": bounds, "counts": [0] * (len(bounds) + 1), "sum": 0}


def observe(h, v):
    for i, b in enumerate(h["bounds"]):
        if v <= b:
            h["counts"][i] += 1
            break
    else:
        h["counts"][-1] += 1
    h["sum"] += v


def fold(data):
    """The exporter's fold (src/snapshot.rs) over the SDK's session models."""
    f = {
        "nodes": {}, "commands": {}, "names": {}, "dbs": {}, "flags": {},
        "sub": 0, "psub": 0, "in_transaction": 0, "qbuf_free": 0, "oll": 0, "obl": 0,
        "max_qbuf": 0, "max_omem": 0, "max_oll": 0,
        "idle": histogram(IDLE_BOUNDS), "age": histogram(AGE_BOUNDS),
        "qbuf": histogram(BUFFER_BOUNDS), "omem": histogram(BUFFER_BOUNDS),
    }
    sessions = data.sessions or []
    for s in sessions:
        for key, value in (("nodes", s.node_id), ("names", s.name)):
            k = "" if value is None else str(value)
            f[key][k] = f[key].get(k, 0) + 1
        cmd = "" if s.cmd is None else str(s.cmd).lower()
        f["commands"][cmd] = f["commands"].get(cmd, 0) + 1
        db = lenient_int(s.db)
        f["dbs"][db] = f["dbs"].get(db, 0) + 1
        for letter in set(str(s.flags or "")):
            slot = letter if letter in FLAGS else "unknown"
            f["flags"][slot] = f["flags"].get(slot, 0) + 1
        f["sub"] += size(s.sub)
        f["psub"] += size(s.psub)
        multi = lenient_int(s.multi)
        if multi is not None and multi >= 0:
            f["in_transaction"] += 1
        f["qbuf_free"] += size(s.qbuf_free)
        f["oll"] += size(s.oll)
        f["obl"] += size(s.obl)
        qbuf, omem, oll = size(s.qbuf), size(s.omem), size(s.oll)
        f["max_qbuf"] = max(f["max_qbuf"], qbuf)
        f["max_omem"] = max(f["max_omem"], omem)
        f["max_oll"] = max(f["max_oll"], oll)
        observe(f["idle"], size(s.idle))
        observe(f["age"], size(s.age))
        observe(f["qbuf"], qbuf)
        observe(f["omem"], omem)
    sources = {}
    for st in data.source_stats or []:
        k = "" if st.key is None else str(st.key)
        sources[k] = sources.get(k, 0) + size(st.count)
    f["sources"] = capped(sources, MAX_SOURCES)
    f["commands"] = capped(f["commands"], MAX_COMMANDS)
    f["names"] = capped(f["names"], MAX_NAMES)
    f["sessions"] = len(sessions)
    f["total"] = lenient_int(data.total)
    return f


class Families:
    """A collector over one folded answer, as the exporter builds its families."""

    def __init__(self, instance, f):
        self.instance, self.f = instance, f

    def collect(self):
        i, f = self.instance, self.f
        g = GaugeMetricFamily("redis_sessions", "Sessions per node", labels=["instance_id", "node_id"])
        for k, v in f["nodes"].items():
            g.add_metric([i, k], v)
        yield g
        for name, key, label in (
            ("redis_sessions_by_command", "commands", "command"),
            ("redis_sessions_by_client_name", "names", "client_name"),
            ("redis_sessions_by_source", "sources", "source"),
        ):
            g = GaugeMetricFamily(name, name, labels=["instance_id", label])
            for k, v in f[key].items():
                g.add_metric([i, k], v)
            yield g
        g = GaugeMetricFamily("redis_sessions_by_db", "db", labels=["instance_id", "db"])
        for k, v in f["dbs"].items():
            g.add_metric([i, "" if k is None else str(k)], v)
        yield g
        g = GaugeMetricFamily("redis_sessions_by_flag", "flags", labels=["instance_id", "flag"])
        for k, v in f["flags"].items():
            g.add_metric([i, k], v)
        yield g
        for key in ("sub", "psub", "in_transaction", "qbuf_free", "oll", "obl", "max_qbuf", "max_omem", "max_oll"):
            g = GaugeMetricFamily(f"redis_session_{key}", key, labels=["instance_id"])
            g.add_metric([i], f[key])
            yield g
        for key in ("idle", "age", "qbuf", "omem"):
            h = f[key]
            g = GaugeHistogramMetricFamily(f"redis_session_{key}", key, labels=["instance_id"])
            acc, buckets = 0, []
            for b, c in zip(h["bounds"] + ["+Inf"], h["counts"]):
                acc += c
                buckets.append((str(b), acc))
            g.add_metric([i], buckets, h["sum"])
            yield g


def poll(client, runtime, instance):
    request = models.GetRedisAllSessionRequest(instance_id=instance)
    response = client.get_redis_all_session_with_options(request, runtime)
    body = response.body
    if str(body.code) not in ("200", "Success", "OK"):
        raise RuntimeError(f"API error {body.code}: {body.message}")
    f = fold(body.data)
    registry = CollectorRegistry()
    registry.register(Families(instance, f))
    return f["sessions"], generate_latest(registry)


def sign_only(n):
    """Microseconds per signature: v1 HMAC-SHA1 (what the benchmark uses) and ACS3-HMAC-SHA256
    (the SDK's default), over a GetRedisAllSession request."""
    params = {
        "Action": "GetRedisAllSession", "Format": "json", "Version": "2020-01-16",
        "Timestamp": "2026-12-01T00:00:00Z", "SignatureNonce": "1f2e3d4c5b6a",
        "InstanceId": "r-bench-000001", "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0", "AccessKeyId": "sim-access-key-id",
    }
    t = time.process_time()
    for _ in range(n):
        Utils.get_rpcsignature(params, "POST", "sim-access-key-secret-not-real")
    v1 = (time.process_time() - t) / n * 1e6

    class Req:
        method = "POST"
        pathname = "/"
        query = {"InstanceId": "r-bench-000001"}
        headers = {
            "host": "das.aliyuncs.com", "x-acs-version": "2020-01-16",
            "x-acs-action": "GetRedisAllSession", "x-acs-date": "2026-12-01T00:00:00Z",
            "x-acs-signature-nonce": "1f2e3d4c5b6a",
            "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        }

    t = time.process_time()
    for _ in range(n):
        Utils.get_authorization(Req, "ACS3-HMAC-SHA256", Req.headers["x-acs-content-sha256"],
                                "sim-access-key-id", "sim-access-key-secret-not-real")
    v3 = (time.process_time() - t) / n * 1e6
    return v1, v3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="host:port of the simulator")
    ap.add_argument("--instance", default="r-bench-000001")
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    config = Config(
        access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
        access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
        endpoint=args.endpoint,
        protocol="http",
        signature_algorithm="v2",
        read_timeout=60_000,
        connect_timeout=5_000,
    )
    client = Client(config)
    runtime = RuntimeOptions(read_timeout=60_000, connect_timeout=5_000)
    sessions = 0
    for _ in range(args.warmup):
        sessions, _ = poll(client, runtime, args.instance)
    start_cpu, start = cpu_seconds(), time.monotonic()
    for _ in range(args.polls):
        sessions, text = poll(client, runtime, args.instance)
    cpu, wall = cpu_seconds() - start_cpu, time.monotonic() - start
    v1, v3 = sign_only(2000)
    print(json.dumps({
        "polls": args.polls, "sessions": sessions, "exposition_bytes": len(text),
        "cpu_ms_per_poll": cpu / args.polls * 1e3, "wall_ms_per_poll": wall / args.polls * 1e3,
        "sign_v1_us": round(v1, 1), "sign_acs3_us": round(v3, 1),
    }))


if __name__ == "__main__":
    sys.exit(main())
