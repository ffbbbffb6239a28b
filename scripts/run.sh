#!/usr/bin/env bash
# The run command: install what is missing, build, put `flotilla` on PATH, start `flotilla dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
# Same invocation as the test command: a different package or target selection can change
# feature unification and rebuild RocksDB (minutes).
cargo build --release --workspace --all-targets
bin="$CARGO_TARGET_DIR/release/flotilla"
mkdir -p "$HOME/.cargo/bin"
ln -sf "$bin" "$HOME/.cargo/bin/flotilla"
echo "flotilla is $bin (linked from ~/.cargo/bin/flotilla)"
exec "$bin" dev "$@"
