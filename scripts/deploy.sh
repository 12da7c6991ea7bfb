#!/usr/bin/env bash
# Deploy an overlay (default dev): everything except the test Jobs, then wait
# (bounded) for the infrastructure to be ready.
#   scripts/deploy.sh [dev|ci|prod]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"
overlay="${1:-dev}"
dir="$(overlay_dir "$overlay")"
ns="$(overlay_namespace "$dir")"
kubectl="$(find_kubectl)"
timeout="${DEPLOY_TIMEOUT:-600s}"
check_secrets "$dir"

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
"$kubectl" kustomize "$dir" >"$rendered"

# Jobs are immutable: one-shot infrastructure Jobs (bucket-init) are re-created so
# they run with the current Secret and config. They are idempotent.
if "$kubectl" get namespace "$ns" >/dev/null 2>&1; then
  "$kubectl" -n "$ns" delete job -l slocast.io/rerun-on-deploy=true --ignore-not-found --wait=true
fi
"$kubectl" apply -f "$rendered" -l 'app.kubernetes.io/component!=test'

echo "waiting up to $timeout for the infrastructure in namespace $ns"
"$kubectl" -n "$ns" rollout status statefulset/postgres --timeout="$timeout"
"$kubectl" -n "$ns" rollout status statefulset/kafka --timeout="$timeout"
"$kubectl" -n "$ns" rollout status deployment/minio --timeout="$timeout"
"$kubectl" -n "$ns" wait --for=condition=complete job/minio-bucket-init --timeout="$timeout"
"$kubectl" -n "$ns" rollout status deployment/mlflow --timeout="$timeout"
"$kubectl" -n "$ns" get pods -o wide
echo "deployed overlay $overlay to namespace $ns (the prediction server turns ready once a champion exists: make test-cluster seeds one)"
