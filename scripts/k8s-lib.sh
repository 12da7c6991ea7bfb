# Shared by the cluster scripts (sourced, not executed).
# kubectl: $KUBECTL, else .tools/bin/kubectl (scripts/install-kubectl.sh), else PATH.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# SLOCAST_MANIFESTS points the scripts at another copy of manifests/ (the tests use one).
manifests_root="${SLOCAST_MANIFESTS:-$repo_root/manifests}"

find_kubectl() {
  if [[ -n "${KUBECTL:-}" ]]; then
    echo "$KUBECTL"
  elif [[ -x "$repo_root/.tools/bin/kubectl" ]]; then
    echo "$repo_root/.tools/bin/kubectl"
  elif command -v kubectl >/dev/null; then
    command -v kubectl
  else
    echo "kubectl not found: run scripts/install-kubectl.sh or set KUBECTL" >&2
    return 1
  fi
}

# overlay_dir NAME -> manifests/overlays/NAME (must exist)
overlay_dir() {
  local dir="$manifests_root/overlays/$1"
  if [[ ! -f "$dir/kustomization.yaml" ]]; then
    echo "unknown overlay '$1' (have: $(ls "$manifests_root/overlays" | tr '\n' ' '))" >&2
    return 1
  fi
  echo "$dir"
}

# overlay_namespace DIR -> the namespace the overlay deploys into
overlay_namespace() {
  awk '/^namespace:/ {print $2; exit}' "$1/kustomization.yaml"
}

# check_secrets DIR: the git-ignored secrets.env exists, has every key of the
# example and no placeholder left.
check_secrets() {
  local file="$1/secrets.env" example="$manifests_root/secrets.env.example" key
  if [[ ! -f "$file" ]]; then
    echo "missing $file: run scripts/make-secrets.sh $(basename "$1") (or copy and edit $example)" >&2
    return 1
  fi
  for key in $(grep -E '^[A-Z_][A-Z0-9_]*=' "$example" | cut -d= -f1); do
    if ! grep -qE "^$key=.+" "$file"; then
      echo "$file: $key is missing or empty" >&2
      return 1
    fi
  done
  if grep -q '=replace-me$' "$file"; then
    echo "$file still holds 'replace-me' placeholders" >&2
    return 1
  fi
}
