#!/usr/bin/env bash
# Build the three images: slocast-training, slocast-prediction, slocast-test.
#   scripts/images.sh [TAG]            build with $CONTAINER_TOOL (default docker), tag TAG (default dev)
#   LOAD=kind scripts/images.sh dev    ... and load them into a kind cluster ($KIND_CLUSTER, default kind)
#   LOAD=minikube scripts/images.sh    ... or into minikube
#   REGISTRY=ghcr.io/you scripts/images.sh 0.1.0   ... and push REGISTRY/slocast-*:TAG
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-dev}"
tool="${CONTAINER_TOOL:-docker}"
command -v "$tool" >/dev/null || { echo "images: '$tool' not found (set CONTAINER_TOOL=podman|nerdctl)" >&2; exit 1; }
cd "$repo_root"
for kind in training prediction test; do
  image="slocast-$kind:$tag"
  echo "== building $image from Dockerfile-$kind"
  "$tool" build --file "Dockerfile-$kind" --tag "$image" .
  case "${LOAD:-}" in
    kind) kind load docker-image "$image" --name "${KIND_CLUSTER:-kind}" ;;
    minikube) minikube image load "$image" ;;
    "") ;;
    *) echo "images: LOAD must be kind or minikube" >&2; exit 1 ;;
  esac
  if [[ -n "${REGISTRY:-}" ]]; then
    "$tool" tag "$image" "$REGISTRY/$image"
    "$tool" push "$REGISTRY/$image"
  fi
done
