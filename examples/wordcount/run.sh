#!/usr/bin/env bash
# Map-reduce word count over files, on a running cluster (`./scripts/run.sh` in another
# terminal), submitted as ONE workflow: one map task per file writes its word count to
# $FLOTILLA_OUTPUT; one reduce task runs after every map and adds up their results, which it
# finds in $FLOTILLA_INPUTS/<id>. A task's output is its dependents' input. The whole DAG is
# accepted or nothing is (see workflow.yaml for the file format, written by hand).
#
#   examples/wordcount/run.sh FILE...        (default: the docs)
# Uses `flotilla` from PATH, or $FLOTILLA (e.g. /var/tmp/flotilla-target/release/flotilla);
# pass --cluster through FLOTILLA_CLUSTER.
set -euo pipefail
flotilla="${FLOTILLA:-flotilla}"
cd "$(dirname "$0")/../.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md ARCHITECTURE.md docs/*.md)

# The workflow file: map-0..map-N, then "reduce" after all of them.
workflow="$(mktemp --suffix=.json)"
trap 'rm -f "$workflow"' EXIT
python3 - "$workflow" "${files[@]}" <<'PY'
import json, os, sys
out, files = sys.argv[1], sys.argv[2:]
maps = [{
    "name": f"map-{i}",
    "queue": "wordcount",
    "command": ["sh", "-c", 'n=$(wc -w < "$1") && printf %s $n > "$FLOTILLA_OUTPUT"', "map", os.path.realpath(f)],
} for i, f in enumerate(files)]
reduce = {
    "name": "reduce",
    "queue": "wordcount",
    "after": [m["name"] for m in maps],
    "command": ["sh", "-c", 'total=0; for p in $FLOTILLA_PARENTS; do total=$((total + $(cat "$FLOTILLA_INPUTS/$p"))); done; printf "%s" "$total" > "$FLOTILLA_OUTPUT"'],
}
json.dump({"tasks": maps + [reduce]}, open(out, "w"), indent=1)
PY
id=$("$flotilla" workflow submit "$workflow")
echo "workflow $id: ${#files[@]} map tasks and a reduce" >&2
"$flotilla" workflow status "$id" --wait 60 >&2
"$flotilla" workflow status "$id" --json | python3 -c '
import json, sys
w = json.load(sys.stdin)
print("words:", next(t["result"] for t in w["tasks"] if t["name"] == "reduce"))'
