# Sourced by the scripts: one target dir outside the clone so that builds are reused across
# clones (CI runs in a fresh clone on the same machine).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
