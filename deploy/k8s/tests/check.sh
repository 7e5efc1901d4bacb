#!/usr/bin/env bash
# Offline checks of deploy/: YAML and JSON parse, kustomize build (if kubectl or kustomize is
# installed), alert rules checked and unit-tested with promtool (if installed), dashboard queries
# parsed by promtool. No cluster needed.  Usage: deploy/k8s/tests/check.sh   (PYTHON=... to pick
# an interpreter with PyYAML, e.g. .venv/bin/python)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(dirname "$here")
deploy=$(dirname "$k8s")
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$py" - "$k8s" "$deploy/dashboards/octopus-crm-sync.json" "$tmp" <<'PY'
import glob, json, os, re, sys
import yaml

k8s, dashboard, tmp = sys.argv[1:]
for path in sorted(glob.glob(f"{k8s}/*.yaml")) + sorted(glob.glob(f"{k8s}/tests/*.yaml")) + sorted(glob.glob(f"{k8s}/../dashboards/*.yaml")):
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    print(f"yaml ok: {os.path.relpath(path, os.path.dirname(k8s))} ({len(docs)} documents)")
rule = yaml.safe_load(open(f"{k8s}/prometheusrule.yaml"))
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(f"{tmp}/rules.yaml", "w"), sort_keys=False)

board = json.load(open(dashboard))
print(f"json ok: dashboards/{dashboard.rsplit('/', 1)[-1]} ({len(board['panels'])} panels)")
rules = []
for panel in board["panels"]:
    for t in panel.get("targets", []):
        expr = t["expr"].replace("$__rate_interval", "2m")
        rules.append({"record": f"dashboard:query_{len(rules)}", "expr": re.sub(r'"\$\w+"', '".*"', expr)})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(f"{tmp}/dashboard.yaml", "w"))
PY

if command -v kustomize >/dev/null; then
  kustomize build "$k8s" >/dev/null && echo "kustomize build ok"
elif command -v kubectl >/dev/null; then
  kubectl kustomize "$k8s" >/dev/null && kubectl kustomize "$deploy/dashboards" >/dev/null && echo "kubectl kustomize ok"
else
  echo "SKIP kustomize build: neither kustomize nor kubectl installed"
fi

if command -v promtool >/dev/null; then
  promtool check rules "$tmp/rules.yaml" "$tmp/dashboard.yaml"
  cp "$here/alerts.test.yaml" "$tmp/"
  (cd "$tmp" && promtool test rules alerts.test.yaml)
else
  echo "SKIP promtool checks: promtool not installed"
fi
