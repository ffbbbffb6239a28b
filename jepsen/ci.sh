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
run() { # run EXPECTED_EXIT NAME [--caught-by CHECKER] ARGS...
  local want="$1" name="$2"; shift 2
  local caught_by=""
  if [ "${1:-}" = "--caught-by" ]; then caught_by="$2"; shift 2; fi
  local started=$SECONDS
  local dir="jepsen/store/ci-$name/$(date +%s)"
  echo "jepsen-ci: $name: $*" >&2
  "$JEPSEN" test --scenario "ci-$name" --out "$dir" "$@"
  local got=$?
  echo "jepsen-ci: $name: exit $got (want $want) in $((SECONDS - started)) s" >&2
  if [ "$got" -ne "$want" ]; then
    echo "jepsen-ci: FAILED $name; checks that were not valid:" >&2
    jq -c '.checks[] | select(.verdict != "valid") | {name, verdict, details}' "$dir/results.json" >&2 || true
    tail -n 5 "$dir"/cluster/node-*.log >&2 2>/dev/null || true
    failed=1
  elif [ -n "$caught_by" ]; then
    # A planted bug must be caught by the checker meant to catch it, not by chance.
    if ! jq -e --arg c "$caught_by" '.checks[] | select(.name == $c) | .verdict == "invalid"' \
        "$dir/results.json" >/dev/null; then
      echo "jepsen-ci: FAILED $name: the $caught_by checker did not find it; it found:" >&2
      jq -c '.checks[] | select(.verdict != "valid") | {name, verdict}' "$dir/results.json" >&2 || true
      failed=1
    fi
  fi
}

run 0 kill          --nemesis kill                  --time-limit 60 --seed 1 --workers "$WORKERS"
run 0 partition     --nemesis partition             --time-limit 60 --seed 2 --workers "$WORKERS"
run 0 pause         --nemesis pause                 --time-limit 60 --seed 3 --workers "$WORKERS"
run 0 mixed         --nemesis kill,partition,pause  --time-limit 75 --seed 4 --workers "$WORKERS"
# A replica's disk fills (it must exit and come back once space is back) or its WAL is damaged
# mid-file while stopped (it must not vote or lead as if intact).
run 0 disk          --nemesis disk-full,disk-corrupt,kill-one --time-limit 60 --seed 10 --workers "$WORKERS"
# Members removed and added back empty, a fresh replica added and removed, leadership handed
# over; kills in between restart replicas that joined.
run 0 membership    --nemesis membership,kill-one   --time-limit 60 --seed 11 --workers "$WORKERS"
run 0 workers       --nemesis worker-kill,worker-pause,kill --time-limit 45 --seed 7 --workers 3
# Tokens and a peer secret on: clients with an admin token, workers bound to their session and
# token (reports to a new leader before the worker re-registered there are retried).
run 0 auth          --nemesis kill,worker-kill      --time-limit 30 --seed 12 --workers 3 --auth --tls
# Planted bugs: short runs with the nemesis that exposes each.
run 1 bug-ack-before-commit --caught-by lost --nemesis kill-leader --time-limit 20 --seed 5 --sut-bug ack-before-commit
run 1 bug-no-idempotency    --caught-by doubled --nemesis none        --time-limit 15 --seed 6 --sut-bug no-idempotency
run 1 bug-dispatch-before-commit --caught-by lost --nemesis kill-leader --time-limit 45 --seed 8 --workers 3 --sut-bug dispatch-before-commit
# Long tasks, so a paused worker resumes while the reassigned attempt still runs.
run 1 bug-skip-attempt-check --caught-by leases --nemesis worker-pause --time-limit 30 --seed 9 --workers 3 --task-work-ms 3000 --think-ms 1000 --sut-bug skip-attempt-check

exit $failed
