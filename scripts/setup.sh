#!/usr/bin/env bash
# Installs what building and testing Flotilla need, idempotently: a C/C++ toolchain, clang/libclang
# for RocksDB's bindings, jq for the fault suite's CI checks, docker-compose for deploy/compose's
# test, systemd for `systemd-analyze verify` of deploy/systemd, chromium for the dashboard's
# browser test. protoc comes from the protoc-bin-vendored crate.
set -euo pipefail

need=()
for pkg in clang libclang-dev build-essential pkg-config fonts-dejavu-core jq docker-compose systemd chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true
