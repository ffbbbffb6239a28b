#!/usr/bin/env bash
# The web dashboard in a real headless browser: Debian's chromium (scripts/setup.sh installs it),
# driven over the DevTools protocol by dashboard.py (websocket-client, installed from PyPI into
# a venv under ~/.cache/flotilla), against a real 3-replica cluster of $FLOTILLA_BIN (default
# $CARGO_TARGET_DIR/release/flotilla). Saves a screenshot to $FLOTILLA_ARTIFACTS/dashboard.png
# (default artifacts/ at the repository root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/browser-venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

command -v chromium >/dev/null || { echo "tests/browser/test.sh: no chromium (run scripts/setup.sh)" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import websocket' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q 'websocket-client==1.8.0'
fi
exec "$venv/bin/python" "$here/dashboard.py"
