#!/usr/bin/env bash
# promtool (checks and unit-tests the Prometheus alert rules in tests/k8s) from the
# Debian/Ubuntu package `prometheus`. Idempotent: nothing to do when promtool is on
# PATH. Needs root (CI runs .ci/run as root) or password-less sudo; otherwise it
# says how to install it and leaves `make install` going (the k8s tests then fail,
# naming promtool).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  echo "promtool already installed: $(command -v promtool)"
  exit 0
fi

if [[ "$(id -u)" == 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install-promtool: not root; install it with 'sudo apt-get install -y --no-install-recommends prometheus'" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-promtool: no apt-get; install promtool (Prometheus >= 2.26) from your package manager" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
install=("${as_root[@]}" apt-get install -y -q --no-install-recommends prometheus)
"${install[@]}" >/dev/null || { "${as_root[@]}" apt-get update -q >/dev/null && "${install[@]}" >/dev/null; }
promtool --version | head -1
