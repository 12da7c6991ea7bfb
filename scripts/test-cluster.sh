#!/usr/bin/env bash
# Run the in-cluster test Jobs of an overlay (default dev) one after the other:
# seed-lte-dataset, test-functional, test-stress. Each is re-created (Jobs are
# immutable), awaited with `kubectl wait` on both its complete and its failed
# condition (bounded by JOB_TIMEOUT), and its logs are printed. Exits non-zero on
# the first Job that fails or times out.
#   scripts/test-cluster.sh [dev|ci|prod]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"
overlay="${1:-dev}"
dir="$(overlay_dir "$overlay")"
ns="$(overlay_namespace "$dir")"
kubectl="$(find_kubectl)"
job_timeout="${JOB_TIMEOUT:-2700}"   # seconds; the Jobs' own activeDeadlineSeconds is 2400
jobs="${JOBS:-seed-lte-dataset test-functional test-stress}"

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
"$kubectl" kustomize "$dir" >"$rendered"

run_job() {
  local job="$1" complete_pid failed_pid status
  echo "== $job"
  "$kubectl" -n "$ns" delete job "$job" --ignore-not-found --wait=true
  "$kubectl" apply -f "$rendered" -l "app.kubernetes.io/component=test,app.kubernetes.io/name=$job"
  "$kubectl" -n "$ns" wait --for=condition=complete "job/$job" --timeout="${job_timeout}s" >/dev/null 2>&1 &
  complete_pid=$!
  "$kubectl" -n "$ns" wait --for=condition=failed "job/$job" --timeout="${job_timeout}s" >/dev/null 2>&1 &
  failed_pid=$!
  # Whichever condition comes first (or both waits time out) ends the wait.
  wait -n "$complete_pid" "$failed_pid" || true
  kill "$complete_pid" "$failed_pid" 2>/dev/null || true
  wait "$complete_pid" "$failed_pid" 2>/dev/null || true
  echo "-- logs of $job"
  "$kubectl" -n "$ns" logs "job/$job" --all-containers=true --tail=-1 || true
  status="$("$kubectl" -n "$ns" get job "$job" -o jsonpath='{.status.succeeded}')"
  if [[ "$status" == "1" ]]; then
    echo "== $job passed"
    return 0
  fi
  if [[ -n "$("$kubectl" -n "$ns" get job "$job" -o jsonpath='{.status.failed}')" ]]; then
    echo "== $job FAILED" >&2
  else
    echo "== $job TIMED OUT after ${job_timeout}s" >&2
  fi
  "$kubectl" -n "$ns" describe job "$job" | tail -n 20 >&2 || true
  return 1
}

for job in $jobs; do
  run_job "$job"
done
echo "all test Jobs passed: $jobs"
