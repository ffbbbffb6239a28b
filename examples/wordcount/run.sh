#!/usr/bin/env bash
# Map-reduce word count over files, on a running cluster (`./scripts/run.sh` in another
# terminal): one map task per file writes its word count to $FLOTILLA_OUTPUT; one reduce task,
# submitted with --after every map task, reads their results from $FLOTILLA_INPUTS/<id> and
# adds them up. A task's output is its dependents' input.
#
#   examples/wordcount/run.sh FILE...        (default: the docs)
# Uses `flotilla` from PATH, or $FLOTILLA (e.g. /var/tmp/flotilla-target/release/flotilla);
# pass --cluster through FLOTILLA_CLUSTER.
set -euo pipefail
flotilla="${FLOTILLA:-flotilla}"
cd "$(dirname "$0")/../.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md ARCHITECTURE.md docs/*.md)

after=()
for f in "${files[@]}"; do
  path="$(realpath "$f")"
  id=$("$flotilla" submit --queue wordcount -- sh -c 'wc -w < "$1" | tr -d " \n" > "$FLOTILLA_OUTPUT"' map "$path")
  echo "map $id: $f" >&2
  after+=(--after "$id")
done
reduce=$("$flotilla" submit --queue wordcount "${after[@]}" -- sh -c '
  total=0
  for p in $FLOTILLA_PARENTS; do total=$((total + $(cat "$FLOTILLA_INPUTS/$p"))); done
  printf "%s" "$total" > "$FLOTILLA_OUTPUT"')
echo "reduce $reduce: after ${#files[@]} map tasks" >&2
"$flotilla" wait "$reduce" --timeout 60 >/dev/null
"$flotilla" status "$reduce" --json | python3 -c 'import json,sys,base64; t=json.load(sys.stdin); print("words:", t["result"])'
