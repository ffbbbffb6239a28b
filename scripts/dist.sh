#!/usr/bin/env bash
# The shipped `flotilla` binary: the release build with its debug info split off.
#   dist/flotilla        stripped, what deploy/ packages (about 28 MB)
#   dist/flotilla.debug  the debug info (line tables), linked by .gnu_debuglink for gdb/perf
# Tests and profiling keep using the unstripped release binary. Builds the release binary
# first if it is missing (`--workspace --all-targets`, so RocksDB is not rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
BIN="$CARGO_TARGET_DIR/release/flotilla"
[ -x "$BIN" ] || cargo build --release --workspace --all-targets
mkdir -p dist
objcopy --only-keep-debug "$BIN" dist/flotilla.debug
strip --strip-all "$BIN" -o dist/flotilla.tmp
(cd dist && objcopy --add-gnu-debuglink=flotilla.debug flotilla.tmp)
mv dist/flotilla.tmp dist/flotilla
echo "dist/flotilla: $(du -m dist/flotilla | cut -f1) MB (debug info in dist/flotilla.debug: $(du -m dist/flotilla.debug | cut -f1) MB)"
