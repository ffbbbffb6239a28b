#!/usr/bin/env bash
# deploy/compose end to end, for real: build the FROM-scratch image, bring up 3 replicas and
# 2 workers with docker-compose (TLS, tokens, peer secret), submit and wait for tasks through
# the CLI, kill the leader's container while a client keeps submitting, and check that every
# task whose submit was acknowledged is still there and succeeds. Everything it creates (the
# compose project with its network and volumes, the image, a temp dir) is removed on exit,
# failure included; nothing else is touched.
#
#   deploy/compose/test.sh            (run by scripts/test.sh; needs docker and docker-compose)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$SECONDS

say() { printf '[compose %3ds] %s\n' "$((SECONDS - started))" "$*"; }
die() { printf '[compose %3ds] FAIL: %s\n' "$((SECONDS - started))" "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (the compose test needs a Docker engine)"
# docker-compose v1 (Debian's package) or the v2 plugin, whichever is here.
if command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    die "neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)"
fi
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed)"
command -v jq >/dev/null || die "jq is not installed (scripts/setup.sh installs it)"

# The shipped binary (what the image packages); remade from the release build when missing or
# older than it, so CI tests the code it just built.
bin="$root/dist/flotilla"
release="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}/release/flotilla"
if [ ! -x "$bin" ] || [ "$release" -nt "$bin" ]; then
    say "dist/flotilla is missing or older than the release build: running scripts/dist.sh"
    "$root/scripts/dist.sh"
fi

# Names of our own: only these are created, and only these are removed.
run_id="$$-$(date +%s)"
project="flotilla-ci-$run_id"
tag="flotilla-ci:$run_id"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-compose.XXXXXX")"
compose() { "${compose_cmd[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }
built=0
up=0

cleanup() {
    local rc=$?
    set +e
    if [ -n "${loader:-}" ]; then
        kill "$loader" 2>/dev/null
        wait "$loader" 2>/dev/null
    fi
    if [ "$up" = 1 ]; then
        if [ "$rc" != 0 ]; then
            echo "---- container states and logs (last 30 lines each) ----" >&2
            compose ps >&2
            for s in replica1 replica2 replica3 worker1 worker2; do
                echo "---- $s ----" >&2
                compose logs --no-color --tail 30 "$s" >&2
            done
        fi
        say "tearing down project $project (containers, network, volumes)"
        compose down -v --remove-orphans --timeout 5 >"$tmp/down.log" 2>&1 || cat "$tmp/down.log" >&2
    fi
    if [ "$built" = 1 ]; then
        docker rmi -f "$tag" >/dev/null 2>&1 || echo "could not remove image $tag" >&2
    fi
    rm -rf "$tmp"
    if [ "$rc" = 0 ]; then
        say "PASS (${SECONDS}s)"
    else
        say "FAILED (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- secrets: a CA, a certificate per replica, tokens, the peer secret ----
say "making the CA, replica certificates, tokens and peer secret in $tmp"
secrets="$tmp/secrets"
mkdir -p "$tmp/ca" "$secrets" "$tmp/client"
"$bin" cert ca --out "$tmp/ca" >/dev/null
cp "$tmp/ca/ca.pem" "$secrets/ca.pem"
for i in 1 2 3; do
    # The name peers and workers dial (replicaN), and the loopback address the host's clients
    # dial through the published port.
    "$bin" cert issue --ca-dir "$tmp/ca" --out "$secrets" --name "replica$i" --peer \
        --host "replica$i" --host localhost --host 127.0.0.1 >/dev/null
done
"$bin" token new --name ci --role admin --tokens-file "$secrets/tokens" >"$tmp/client/admin.token"
"$bin" token new --name workers --role worker --tokens-file "$secrets/tokens" >"$secrets/worker.token"
"$bin" token peer-secret "$secrets/peer-secret" >/dev/null
chmod 0600 "$secrets/worker.token" "$tmp/client/admin.token"
# The containers run as uid 65532 and the secrets are bind-mounted as they are: make them
# that user's (as root), or readable to it (otherwise; these are throwaway test secrets).
chmod 0755 "$tmp" "$secrets"
if [ "$(id -u)" = 0 ]; then
    chown 65532:65532 "$secrets"/*
else
    chmod a+r "$secrets"/*
fi

# ---- the image ----
say "building image $tag FROM scratch"
built=1
"$here/build.sh" "$tag" | sed "s/^/[compose]   /"

# ---- up ----
export FLOTILLA_IMAGE="$tag" FLOTILLA_SECRETS="$secrets" FLOTILLA_CLUSTER_NAME="ci-$run_id"
# Empty: Docker picks free host ports (so runs and other services do not collide).
export FLOTILLA_PORT_1="" FLOTILLA_PORT_2="" FLOTILLA_PORT_3="" FLOTILLA_BIND=127.0.0.1
say "starting project $project: 3 replicas, then 2 workers once the replicas are healthy"
up=1
compose up -d >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; die "docker-compose up failed"; }

container() { compose ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(container "$1")"; }
wait_healthy() { # SERVICE... : every one healthy within 90 s
    local deadline=$((SECONDS + 90)) s
    for s in "$@"; do
        until [ "$(health "$s")" = healthy ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "$s is not healthy after 90 s (it is $(health "$s"))"
            sleep 1
        done
    done
}
wait_healthy replica1 replica2 replica3
for w in worker1 worker2; do
    [ "$(docker inspect -f '{{.State.Running}}' "$(container "$w")")" = true ] || die "$w is not running"
done
say "replicas healthy (/readyz via flotilla probe); workers running"

# ---- the CLI from the host, through the published ports, over TLS with a token ----
cluster=""
for i in 1 2 3; do
    port="$(compose port replica$i 7401 | sed 's/.*://')"
    [ -n "$port" ] || die "replica$i has no published client port"
    cluster="${cluster:+$cluster,}127.0.0.1:$port"
    eval "port_$i=$port"
done
export FLOTILLA_CLUSTER="$cluster" FLOTILLA_CA="$secrets/ca.pem" FLOTILLA_TOKEN_FILE="$tmp/client/admin.token"
unset FLOTILLA_TOKEN
fl() { "$bin" "$@"; }
say "cluster at $cluster"

leader_id() { # the leader's id as the cluster reports it (empty: none yet)
    fl cluster status --json 2>/dev/null | jq -r '.leader // empty'
}
deadline=$((SECONDS + 30))
until [ -n "$(leader_id)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "no leader after 30 s"
    sleep 0.5
done

# A worker must be registered before the first task can run.
deadline=$((SECONDS + 30))
until [ "$(fl workers --json 2>/dev/null | jq 'length' 2>/dev/null || echo 0)" -ge 2 ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "the 2 workers did not register within 30 s"
    sleep 0.5
done
say "2 workers registered"

acked="$tmp/acked"
: >"$acked"
submit() { # KEY : submits one task with that idempotency key; records its id if acknowledged
    local id
    if id="$(timeout 20 "$bin" submit --key "$1" -- flotilla --version 2>>"$tmp/submit.err")" && [ -n "$id" ]; then
        echo "$id" >>"$acked"
        return 0
    fi
    echo "$1" >>"$tmp/unacknowledged"
    return 1
}

first="$(fl submit --key first -- flotilla --version)" || die "the first submit failed"
echo "$first" >>"$acked"
fl wait --timeout 30 "$first" >/dev/null || die "task $first did not succeed: $(fl status "$first")"
say "task $first succeeded on a worker: $(fl status --json "$first" | jq -c '{state, attempts, result: (.result // "" | fromjson? // .)}')"

for i in $(seq 1 20); do
    submit "before-$i" || die "submit before-$i failed with every replica up: $(tail -1 "$tmp/submit.err")"
done
say "20 more tasks submitted and acknowledged"

# ---- kill the leader while a client keeps submitting ----
old="$(leader_id)"
[ -n "$old" ] || die "no leader to kill"
victim="$(container "replica$old")"
stop="$tmp/stop-submitting"
(
    n=0
    while [ -d "$tmp" ] && [ ! -e "$stop" ]; do
        n=$((n + 1))
        submit "during-$n" || true
    done
) &
loader=$!
sleep 1
say "killing the leader, replica$old (container ${victim:0:12}), while submitting"
docker kill "$victim" >/dev/null
killed_at=$SECONDS
deadline=$((SECONDS + 30))
while :; do
    now="$(leader_id)"
    if [ -n "$now" ] && [ "$now" != "$old" ]; then break; fi
    [ "$SECONDS" -lt "$deadline" ] || die "no new leader within 30 s of killing replica$old"
    sleep 0.2
done
say "new leader: replica$now (elected within $((SECONDS - killed_at))s)"
sleep 2
touch "$stop"
wait "$loader"
loader=""
during="$(grep -c . "$acked")"
refused="$(cat "$tmp/unacknowledged" 2>/dev/null | grep -c . || true)"
for i in $(seq 1 10); do
    submit "after-$i" || die "submit after-$i failed on the 2 surviving replicas: $(tail -1 "$tmp/submit.err")"
done
say "10 tasks submitted after the failover; $(grep -c . "$acked") acknowledged in all ($((during - 21)) by the client running across the kill, which saw ${refused:-0} submits fail)"

# ---- nothing acknowledged is lost, and everything runs ----
listed="$tmp/listed"
fl list --json --limit 100000 | jq -r '.[].id' | sort -u >"$listed"
missing="$(sort -u "$acked" | comm -23 - "$listed")"
[ -z "$missing" ] || die "acknowledged tasks missing after the failover: $(echo $missing)"
say "all $(sort -u "$acked" | grep -c .) acknowledged tasks are listed by the new leader"
# Every one runs to success: poll the task list until none is left unfinished.
deadline=$((SECONDS + 60))
while :; do
    fl list --json --limit 100000 >"$tmp/tasks.json" || die "flotilla list failed"
    states="$(jq -r --rawfile ids "$acked" '($ids | split("\n") | map(select(. != "") | tonumber)) as $want
        | [.[] | select(.id as $i | $want | index($i))] | group_by(.state)
        | map("\(.[0].state)=\(length)") | join(" ")' "$tmp/tasks.json")"
    bad="$(jq -r --rawfile ids "$acked" '($ids | split("\n") | map(select(. != "") | tonumber)) as $want
        | [.[] | select((.id as $i | $want | index($i)) and (.state == "failed" or .state == "cancelled"))
        | "\(.id) \(.state): \(.reason // "")"] | join("; ")' "$tmp/tasks.json")"
    [ -z "$bad" ] || die "acknowledged tasks did not succeed: $bad"
    [ "$states" = "succeeded=$(sort -u "$acked" | grep -c .)" ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "acknowledged tasks still unfinished after 60 s: $states"
    sleep 0.5
done
say "every acknowledged task succeeded ($states)"

# ---- the killed replica comes back from its volume and catches up ----
say "replica$old's container is $(docker inspect -f '{{.State.Status}}' "$victim") (docker kill is a manual stop: restart: unless-stopped leaves it down); starting it again"
docker start "$victim" >/dev/null
wait_healthy "replica$old"
# A free host port was picked at start: the restarted container has a new one.
port_old="$(compose port "replica$old" 7401 | sed 's/.*://')"
want="$(fl cluster status --json | jq -r .task_count)"
deadline=$((SECONDS + 30))
while :; do
    status="$(fl cluster status --json --node "127.0.0.1:$port_old" 2>"$tmp/status.err")" \
        || die "replica$old does not answer after its restart: $(cat "$tmp/status.err")"
    [ "$(jq -r .node_id <<<"$status")" = "$old" ] || die "asked replica$old, another one answered"
    [ "$(jq -r .task_count <<<"$status")" = "$want" ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "replica$old holds $(jq -r .task_count <<<"$status") tasks 30 s after its restart, the leader $want"
    sleep 0.5
done
say "replica$old restarted from its volume and caught up: $(jq -r .role <<<"$status"), term $(jq -r .term <<<"$status"), $want tasks like the leader"
