#!/usr/bin/env bash
# Generates the Prometheus rules from their templates and one settings file:
#
#   deploy/prometheus/rules.env                     the settings: thresholds, the job
#                                                   selector, the instance labels every
#                                                   alert carries, the runbook base URL
#   deploy/prometheus/templates/*-rules.yml         the rules, with ${NAME} placeholders
#   ->  deploy/prometheus/recording-rules.yml       what plain Prometheus loads
#       deploy/prometheus/alert-rules.yml
#       deploy/kubernetes/components/prometheusrule/prometheusrule.yaml
#                                                   the same rules as a Prometheus
#                                                   Operator PrometheusRule
#       deploy/grafana/redis-sessions.json          rewritten in place: a variable per
#                                                   INSTANCE_LABELS label, the instance_id
#                                                   variable filtered by them, and the
#                                                   import prompt (__inputs, __requires)
#
#   scripts/gen-prometheusrule.sh                   write the four files
#   scripts/gen-prometheusrule.sh --check           exit 1 if any of them is out of date
#   scripts/gen-prometheusrule.sh --settings FILE --out DIR
#                                                   other settings, written under DIR
#                                                   (same relative paths), e.g. for your
#                                                   own deployment repository
#
# Besides the keys of rules.env, a template may use these derived names:
# POLL_FAILING_HUMAN and IDLE_THRESHOLD_HUMAN (e.g. "3m", "1h"),
# LIMIT_RATIO_WARNING_PERCENT and LIMIT_RATIO_CRITICAL_PERCENT (e.g. "80%").
# Text work only (python3's standard library): comments and layout of the
# templates are kept; the PrometheusRule carries everything after each rule
# file's top-level `groups:` line, indented under `spec.groups`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

settings=deploy/prometheus/rules.env
out_dir=.
check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --settings) settings=$2; shift ;;
    --out) out_dir=$2; shift ;;
    *)
      echo "usage: $0 [--check] [--settings FILE] [--out DIR]" >&2
      exit 2
      ;;
  esac
  shift
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$settings" "$tmp" "$out_dir" <<'PY'
import json
import os
import re
import sys

settings_path, out, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]

# Every key rules.env must set, with a check of its value.
NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
IDLE_BOUNDS = {"1", "5", "10", "30", "60", "300", "600", "1800", "3600", "21600", "86400"}
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels the alerts already carry, or that name the scrape target: joining them
# from redis_session_instance_info would clash.
RESERVED = {"instance_id", "job", "instance", "severity", "source", "code", "le", "alertname"}


def ratio(v):
    return NUMBER.fullmatch(v) is not None and 0 < float(v) <= 1


def labels(v):
    names = [x.strip() for x in v.split(",")]
    return all(LABEL.fullmatch(n) and n not in RESERVED for n in names) and len(set(names)) == len(names)


KEYS = {
    "RUNBOOK_BASE_URL": (lambda v: re.fullmatch(r"\S+", v) is not None, "a URL without spaces"),
    "JOB_SELECTOR": (lambda v: re.fullmatch(r'\s*\w+\s*(=|!=|=~|!~)\s*"[^"]*"(\s*,\s*\w+\s*(=|!=|=~|!~)\s*"[^"]*")*\s*', v) is not None,
                     'label matchers such as job="redis-session-exporter"'),
    "INSTANCE_LABELS": (labels, f"comma-separated label names, none of {sorted(RESERVED)}"),
    "POLL_FAILING_SECONDS": (lambda v: v.isdigit() and int(v) > 0, "a whole number of seconds"),
    "IDLE_THRESHOLD_SECONDS": (lambda v: v in IDLE_BOUNDS,
                               f"a bucket bound of redis_session_idle_seconds: {sorted(IDLE_BOUNDS, key=int)}"),
    "OUTPUT_BUFFER_BYTES": (lambda v: v.isdigit() and int(v) > 0, "a whole number of bytes"),
    "OUTPUT_BUFFER_GROWING_BYTES": (lambda v: v.isdigit() and int(v) > 0, "a whole number of bytes"),
    "LIMIT_RATIO_WARNING": (ratio, "a ratio in (0, 1]"),
    "LIMIT_RATIO_CRITICAL": (ratio, "a ratio in (0, 1]"),
    "DEFAULT_MAX_CONNECTIONS": (lambda v: v.isdigit() and int(v) > 0, "a whole number"),
}

errors = []
values = {}
with open(settings_path) as f:
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        where = f"{settings_path}:{n}"
        if not eq or key != key.strip():
            errors.append(f"{where}: not KEY=value")
        elif key not in KEYS:
            errors.append(f"{where}: unknown key {key}")
        elif key in values:
            errors.append(f"{where}: {key} set twice")
        elif not KEYS[key][0](value):
            errors.append(f"{where}: {key}={value}: must be {KEYS[key][1]}")
        else:
            values[key] = value
for key in KEYS:
    if key not in values and not any(key in e for e in errors):
        errors.append(f"{settings_path}: {key} is not set")
if not errors and float(values["LIMIT_RATIO_WARNING"]) > float(values["LIMIT_RATIO_CRITICAL"]):
    errors.append(f"{settings_path}: LIMIT_RATIO_WARNING is above LIMIT_RATIO_CRITICAL")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)


def human_seconds(s):
    s = int(s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def percent(r):
    return f"{float(r) * 100:g}%"


values["INSTANCE_LABELS"] = ", ".join(x.strip() for x in values["INSTANCE_LABELS"].split(","))
values["POLL_FAILING_HUMAN"] = human_seconds(values["POLL_FAILING_SECONDS"])
values["IDLE_THRESHOLD_HUMAN"] = human_seconds(values["IDLE_THRESHOLD_SECONDS"])
values["LIMIT_RATIO_WARNING_PERCENT"] = percent(values["LIMIT_RATIO_WARNING"])
values["LIMIT_RATIO_CRITICAL_PERCENT"] = percent(values["LIMIT_RATIO_CRITICAL"])

HEADER = ("# GENERATED by scripts/gen-prometheusrule.sh from\n"
          "# {src} and deploy/prometheus/rules.env.\n"
          "# Do not edit: edit those and re-run it.\n"
          "#\n")


def render(path):
    with open(path) as f:
        text = f.read()

    def sub(m):
        if m.group(1) not in values:
            errors.append(f"{path}: unknown placeholder ${{{m.group(1)}}}")
            return m.group(0)
        return values[m.group(1)]

    # The template's own note about placeholders (a comment paragraph) does not
    # belong in the output.
    text = re.sub(r"# TEMPLATE: .*\n(# \S.*\n)*(#\n)?", "", text)
    text = re.sub(r"\$\{(\w+)\}", sub, text)
    lines = text.split("\n")
    assert lines[0] == "---", f"{path}: must start with ---"
    return "---\n" + HEADER.format(src=path) + "\n".join(lines[1:])


outputs = {}
groups = []
for name in ("recording-rules.yml", "alert-rules.yml"):
    src = f"deploy/prometheus/templates/{name}"
    text = render(src)
    outputs[f"deploy/prometheus/{name}"] = text
    body = text.split("\n")
    try:
        start = body.index("groups:")
    except ValueError:
        errors.append(f"{src}: no top-level 'groups:' line")
        continue
    # Everything after `groups:`, indented; empty lines stay empty.
    groups += [("  " + line) if line else "" for line in body[start + 1:]]
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
while groups and groups[-1] == "":
    groups.pop()

outputs["deploy/kubernetes/components/prometheusrule/prometheusrule.yaml"] = """---
# GENERATED by scripts/gen-prometheusrule.sh from deploy/prometheus/templates/
# and deploy/prometheus/rules.env. Do not edit: edit those and re-run it.
#
# The label kube-prometheus-stack's ruleSelector wants (release) is added by
# the component deploy/kubernetes/components/kube-prometheus-stack.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: redis-session-exporter
  namespace: redis-session-exporter
  labels:
    app.kubernetes.io/name: redis-session-exporter
spec:
  groups:
""" + "\n".join(groups) + "\n"

# The dashboard: its variables follow INSTANCE_LABELS, so that the labels alerts route on are
# the labels the dashboard filters by. Everything else of the file is kept as it is.
DASHBOARD = "deploy/grafana/redis-sessions.json"
src = os.path.join(out_dir, DASHBOARD)
if not os.path.exists(src):
    src = DASHBOARD
with open(src) as f:
    dash = json.load(f)
DS = {"type": "prometheus", "uid": "${datasource}"}
names = [x.strip() for x in values["INSTANCE_LABELS"].split(",")]
old = {v["name"]: v for v in dash["templating"]["list"]}
generated = set(names) | {"datasource", "instance_id"}
variables = [dict(old.get("datasource", {}), **{
    "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
    # The data source chosen at import (the DS_PROMETHEUS input) is the default.
    "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
    "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
    "skipUrlSync": False,
})]
for name in names:
    q = f"label_values(redis_session_instance_info, {name})"
    variables.append({
        "name": name, "label": name,
        "description": f"The instance label {name} (INSTANCE_LABELS of deploy/prometheus/rules.env).",
        "type": "query", "datasource": DS, "definition": q, "query": q,
        "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "options": [],
        "refresh": 2, "regex": "", "sort": 1, "hide": 0, "skipUrlSync": False,
    })
matchers = ", ".join(f'{n}=~"${n}"' for n in names)
q = f"label_values(redis_session_instance_info{{{matchers}}}, instance_id)"
inst = dict(old.get("instance_id", {}), **{
    "name": "instance_id", "label": "Instance", "type": "query", "datasource": DS,
    "definition": q, "query": q, "multi": True, "includeAll": True, "current": {}, "options": [],
    "refresh": 2, "regex": "", "sort": 1, "hide": 0, "skipUrlSync": False,
    "description": "Instances with the labels selected on the left. All = every one of them.",
})
# No allValue: "All" expands to the instances listed, so the label variables filter every panel.
inst.pop("allValue", None)
variables.append(inst)
# The connection limit the utilization panel assumes where the exporter knows none, as the rules do.
variables.append({
    "name": "default_max_connections", "label": "Default connection limit",
    "description": "DEFAULT_MAX_CONNECTIONS of deploy/prometheus/rules.env.",
    "type": "constant", "query": values["DEFAULT_MAX_CONNECTIONS"], "hide": 2, "skipUrlSync": False,
    "current": {"selected": False, "text": values["DEFAULT_MAX_CONNECTIONS"],
                "value": values["DEFAULT_MAX_CONNECTIONS"]},
    "options": [],
})
generated.add("default_max_connections")
variables += [v for v in dash["templating"]["list"] if v["name"] not in generated]
dash["templating"]["list"] = variables


def panel_types(panels):
    for p in panels:
        if p.get("type") != "row":
            yield p["type"]
        yield from panel_types(p.get("panels", []))


NAMES = {"stat": "Stat", "timeseries": "Time series", "heatmap": "Heatmap", "table": "Table",
         "state-timeline": "State timeline", "bargauge": "Bar gauge", "gauge": "Gauge", "text": "Text",
         "piechart": "Pie chart"}
ordered = {"__inputs": [{
    "name": "DS_PROMETHEUS", "label": "Prometheus",
    "description": "The Prometheus that scrapes redis-session-exporter",
    "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
}], "__requires": [
    {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.3.0"},
    {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
] + [{"type": "panel", "id": t, "name": NAMES.get(t, t), "version": ""}
     for t in sorted(set(panel_types(dash["panels"])))]}
ordered.update((k, v) for k, v in dash.items() if k not in ordered)
outputs[DASHBOARD] = json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"

for path, text in outputs.items():
    dest = os.path.join(out, path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w") as f:
        f.write(text)
PY

outputs=(deploy/prometheus/recording-rules.yml deploy/prometheus/alert-rules.yml
  deploy/kubernetes/components/prometheusrule/prometheusrule.yaml deploy/grafana/redis-sessions.json)
if [ "$check" = 1 ]; then
  rc=0
  for f in "${outputs[@]}"; do
    if ! diff -u "$out_dir/$f" "$tmp/$f"; then
      echo "gen-prometheusrule: $out_dir/$f is out of date; run scripts/gen-prometheusrule.sh" >&2
      rc=1
    fi
  done
  exit "$rc"
fi
for f in "${outputs[@]}"; do
  mkdir -p "$(dirname "$out_dir/$f")"
  cp "$tmp/$f" "$out_dir/$f"
  echo "wrote $out_dir/$f"
done
