#!/usr/bin/env bash
# The test command: install what is missing, check formatting, build once in release, and run
# every test (unit, property, storage conformance, black-box cluster tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo build --release --workspace --all-targets
cargo test --release --workspace
./clients/python/test.sh
./jepsen/ci.sh
