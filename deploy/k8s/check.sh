#!/usr/bin/env bash
# Validates deploy/k8s against the Kubernetes API schemas, offline: kubernetes-validate (from
# PyPI) ships the OpenAPI-derived JSON schemas of every Kubernetes release. --strict rejects
# unknown fields, so a misspelt key fails as surely as a wrong type. Runs in the test command.
set -euo pipefail
cd "$(dirname "$0")"
venv="${FLOTILLA_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/k8s-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
failed=0
# An older release still in wide use and a recent one.
for version in 1.28.0 1.33.0; do
  if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" flotilla.yaml; then
    echo "deploy/k8s: flotilla.yaml does not validate against Kubernetes $version" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] && echo "deploy/k8s: flotilla.yaml validates (strict) against Kubernetes 1.28 and 1.33"
exit "$failed"
