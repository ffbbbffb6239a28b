#!/usr/bin/env bash
# The CI matrix of the fault-injection suite (about 10 minutes of suite time on 2 cores):
# real-build scenarios must come out `valid` (exit 0); planted-bug scenarios must come out
# `invalid` (exit 1) — proof that the checkers can fail. Expects the release build to exist
# (scripts/test.sh builds it); builds the planted-bug binary itself if it is missing or stale.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
JEPSEN="$CARGO_TARGET_DIR/release/flotilla-jepsen"
[ -x "$JEPSEN" ] || cargo build --release --workspace --all-targets
WORKERS="${JEPSEN_WORKERS:-0}"

failed=0
run() { # run EXPECTED_EXIT NAME ARGS...
  local want="$1" name="$2"; shift 2
  local started=$SECONDS
  echo "jepsen-ci: $name: $*" >&2
  "$JEPSEN" test --scenario "ci-$name" "$@"
  local got=$?
  echo "jepsen-ci: $name: exit $got (want $want) in $((SECONDS - started)) s" >&2
  if [ "$got" -ne "$want" ]; then
    echo "jepsen-ci: FAILED $name" >&2
    failed=1
  fi
}

run 0 kill          --nemesis kill                  --time-limit 60 --seed 1 --workers "$WORKERS"
run 0 partition     --nemesis partition             --time-limit 60 --seed 2 --workers "$WORKERS"
run 0 pause         --nemesis pause                 --time-limit 60 --seed 3 --workers "$WORKERS"
run 0 mixed         --nemesis kill,partition,pause  --time-limit 75 --seed 4 --workers "$WORKERS"
run 0 workers       --nemesis worker-kill,worker-pause,kill --time-limit 45 --seed 7 --workers 3
# Planted bugs: short runs with the nemesis that exposes each.
run 1 bug-ack-before-commit --nemesis kill-leader --time-limit 20 --seed 5 --sut-bug ack-before-commit
run 1 bug-no-idempotency    --nemesis none        --time-limit 15 --seed 6 --sut-bug no-idempotency
run 1 bug-dispatch-before-commit --nemesis kill-leader --time-limit 45 --seed 8 --workers 3 --sut-bug dispatch-before-commit
# Long tasks, so a paused worker resumes while the reassigned attempt still runs.
run 1 bug-skip-attempt-check --nemesis worker-pause --time-limit 30 --seed 9 --workers 3 --task-work-ms 3000 --think-ms 1000 --sut-bug skip-attempt-check

exit $failed
