#!/usr/bin/env bash
# Remove everything an overlay (default dev) deployed, test Jobs included, by
# deleting its namespace: the volumes (Kafka, PostgreSQL, MinIO, latency models)
# and their data go with it.
#   scripts/undeploy.sh [dev|ci|prod]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"
overlay="${1:-dev}"
dir="$(overlay_dir "$overlay")"
ns="$(overlay_namespace "$dir")"
kubectl="$(find_kubectl)"
"$kubectl" delete namespace "$ns" --ignore-not-found --wait=true --timeout="${UNDEPLOY_TIMEOUT:-300s}"
echo "removed overlay $overlay (namespace $ns)"
