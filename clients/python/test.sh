#!/usr/bin/env bash
# The Python client's tests: a venv in clients/python/.venv (made if missing), the package and
# the test dependencies installed from PyPI, then pytest against real clusters of the flotilla
# binary at $FLOTILLA_BIN (default: $CARGO_TARGET_DIR/release/flotilla, CARGO_TARGET_DIR
# defaulting to /var/tmp/flotilla-target). Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

python="${PYTHON:-python3}"
venv="$here/.venv"
target="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
export FLOTILLA_BIN="${FLOTILLA_BIN:-$target/release/flotilla}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$FLOTILLA_BIN" ]; then
  echo "clients/python/test.sh: no flotilla binary at $FLOTILLA_BIN (cargo build --release, or set FLOTILLA_BIN)" >&2
  exit 1
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "clients/python/test.sh: $python is older than Python 3.10" >&2
  exit 1
}

# The venv is made anew when its interpreter no longer runs or is another version than $python.
want="$("$python" -c 'import sys; print(sys.version)')"
if [ "$("$venv/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

start=$(date +%s)
# The package is built from this checkout (stubs generated from ../../proto) every time.
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r requirements-test.txt "$here"
echo "clients/python/test.sh: installed in $(( $(date +%s) - start )) s; testing with $FLOTILLA_BIN"

exec "$venv/bin/python" -m pytest -p timeout --timeout 180 -ra "$@"
