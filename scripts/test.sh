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
# The criterion micro-benchmarks, each run once as a smoke check (`cargo bench` measures).
cargo test --release --workspace --bench core
# deploy/compose for real: the FROM-scratch image, 3 replicas and 2 workers under docker-compose,
# a leader container killed (needs docker and docker-compose; fails, never skips, without them).
./deploy/compose/test.sh
# deploy/systemd's units checked by systemd-analyze verify.
./deploy/systemd/check.sh
# deploy/k8s validated offline and strictly against the Kubernetes API schemas.
./deploy/k8s/check.sh
./clients/python/test.sh
# The web dashboard in headless chromium against a real cluster; screenshot in artifacts/.
./tests/browser/test.sh
./jepsen/ci.sh
