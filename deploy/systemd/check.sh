#!/usr/bin/env bash
# Checks the unit files with `systemd-analyze verify` (syntax, known directives and values,
# the executables exist); any warning fails it. Runs in the test command. Uses the real binary, placed where the units expect it
# under a scratch root, so nothing is installed on this machine.
set -euo pipefail
cd "$(dirname "$0")"
command -v systemd-analyze >/dev/null || {
  echo "deploy/systemd/check.sh: systemd-analyze is missing (Debian package systemd; scripts/setup.sh installs it)" >&2
  exit 1
}
. ../../scripts/env.sh
BIN="${FLOTILLA_BIN:-$CARGO_TARGET_DIR/release/flotilla}"
[ -x "$BIN" ] || { echo "deploy/systemd/check.sh: no binary at $BIN (build first)" >&2; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/flotilla"
cp "$BIN" "$root/usr/local/bin/flotilla"
cp flotilla-replica.service flotilla-worker.service "$root/etc/systemd/system/"
# ExecStart paths are checked against the real root: point them at the scratch copy.
sed -i "s#/usr/local/bin/flotilla#$root/usr/local/bin/flotilla#" "$root"/etc/systemd/system/*.service
failed=0
for unit in flotilla-replica.service flotilla-worker.service; do
  if out="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$root/etc/systemd/system/$unit" 2>&1)" \
     && [ -z "$out" ]; then
    echo "deploy/systemd: $unit verifies"
    :
  else
    echo "deploy/systemd: $unit does not verify:" >&2
    echo "$out" >&2
    failed=1
  fi
done
exit "$failed"
