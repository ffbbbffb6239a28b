#!/usr/bin/env bash
# The long run of the decode fuzzer (crates/flotilla-server/tests/fuzz_decode.rs): every target
# with FLOTILLA_FUZZ_CASES inputs (default 10,000,000 each; the test command runs 100,000).
# Usage: ./scripts/fuzz.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export FLOTILLA_FUZZ_CASES="${1:-10000000}"
export FLOTILLA_FUZZ_SEED="${2:-14}"
cargo test --release --workspace --test fuzz_decode -- --nocapture --test-threads 1 2>&1 | grep -oE "fuzz [a-zA-Z ]+: .*|test result.*|panicked.*"
