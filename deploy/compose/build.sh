#!/usr/bin/env bash
# Builds the Flotilla image FROM scratch: dist/flotilla plus the shared libraries `ldd` lists
# for it, each at the path the loader looks for it (no base image, no registry).
#   deploy/compose/build.sh [TAG]        TAG defaults to flotilla:local
# Makes dist/flotilla first (scripts/dist.sh) when it is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tag="${1:-flotilla:local}"
bin="$root/dist/flotilla"
[ -x "$bin" ] || "$root/scripts/dist.sh"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ctx="$tmp/context"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/data" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/flotilla"
# Each line of ldd is either `name => /path (addr)` or `/path (addr)` (the loader); copy the
# file the path resolves to, under the path itself (so /lib64/ld-linux-x86-64.so.2, the ELF
# interpreter, exists as such).
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || { echo "build.sh: ldd lists no libraries for $bin" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
# Name lookups (the replicas reach each other as replica1, replica2, ... on the compose network)
# go to Docker's /etc/hosts and DNS; glibc >= 2.34 has the files and dns backends built in.
mkdir -p "$ctx/rootfs/etc"
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/nonexistent\nflotilla:x:65532:65532:flotilla:/var/lib/flotilla:/nonexistent\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nflotilla:x:65532:\n' >"$ctx/rootfs/etc/group"
cp "$here/Dockerfile" "$ctx/Dockerfile"
# The legacy builder: this engine has no BuildKit plugin, and a FROM scratch image needs none.
if ! DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2
    exit 1
fi
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1000000}'); libraries: $(echo $libs | tr '\n' ' '))"
