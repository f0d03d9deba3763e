#!/usr/bin/env bash
# The scale-out deployment in containers (CTest labels `container`, `rados`):
# docker-compose.rados.yml, a Ceph cluster (deploy/ceph-dev) and two
# ckpt-servers over its pool, exercised from the host.
#
#   tests/container/compose_rados_test.sh CKPT_CLI
#
# 1. podman, podman-compose and the base image as container_test.sh; builds
#    the ckpt-server image (a cache hit after container_test.sh) and the
#    ckpt-ceph-dev image;
# 2. `podman-compose -f docker-compose.rados.yml up -d` with its own tokens
#    and free ports; waits until both servers' health checks pass;
# 3. saves through server A and loads, lists and shows through server B
#    (the same version); dedup across servers;
# 4. stops server A: server B goes on saving and loading; starts A again;
# 5. recreates everything (down, up): the cluster's volume keeps the data
#    even when the cluster's container gets another address;
# 6. `down -v`.
# Idempotent: leftovers of an earlier run (same project) are removed first.
set -euo pipefail

cli="${1:?usage: compose_rados_test.sh CKPT_CLI}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
project=ckpt-ctest-rados
t0=$SECONDS
name=compose_rados_test
work="$(mktemp -d /tmp/ckpt-compose-rados-test-XXXXXX)"
# shellcheck source=tests/container/lib.sh
source "$root/tests/container/lib.sh"

compose() {
  timeout 300 podman-compose -p "$project" -f "$root/docker-compose.rados.yml" "$@"
}

services=(ceph ckpt-a ckpt-b)
trap cleanup EXIT

container_tools
step "removing leftovers of an earlier run"
compose down -v >/dev/null 2>&1 || true
build_image deploy/Dockerfile ckpt-server:latest
build_image deploy/ceph-dev/Dockerfile ckpt-ceph-dev:latest

make_tokens
port_a="$(free_port)"
port_b="$(free_port)"
while [[ "$port_b" == "$port_a" ]]; do port_b="$(free_port)"; done
export CKPT_TOKENS_SOURCE="$work/tokens" CKPT_PORT_A="$port_a" CKPT_PORT_B="$port_b"
a="127.0.0.1:$port_a"
b="127.0.0.1:$port_b"
ckpt_at() {
  local server=$1
  shift
  timeout 60 "$cli" --server "$server" --timeout 20 "$@"
}

up() {
  compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "podman-compose up failed"; }
  wait_healthy "$(service_container ckpt-a)"
  wait_healthy "$(service_container ckpt-b)"
}

step "podman-compose -f docker-compose.rados.yml up -d (servers on $port_a and $port_b)"
up
logs="$(podman logs "$(service_container ckpt-a)" 2>&1)"
grep -q "data in RADOS pool ckpt" <<<"$logs" || fail "server A does not use the pool: $logs"
ceph_addr_1="$(podman exec "$(service_container ceph)" cat /etc/ckpt-ceph/ready)"
step "cluster on $ceph_addr_1"

step "save through A, read through B"
head -c $((6 * 1024 * 1024 + 17)) /dev/urandom >"$work/model.bin"
CKPT_TOKEN="$writer_token" ckpt_at "$a" put ctest/run-1/model "$work/model.bin" --tag best
CKPT_TOKEN="$writer_token" ckpt_at "$b" get ctest/run-1/model@best "$work/from-b.bin"
cmp "$work/model.bin" "$work/from-b.bin" || fail "B returned other bytes"
out="$(CKPT_TOKEN="$admin_token" ckpt_at "$b" versions ctest/run-1/model --json)"
[[ "$(python3 -c 'import json,sys; v=json.load(sys.stdin); print(len(v), v[0]["version"])' <<<"$out")" == "1 1" ]] ||
  fail "versions through B: $out"

step "the same bytes through B again: deduplicated in the pool"
out="$(CKPT_TOKEN="$writer_token" ckpt_at "$b" put ctest/run-1/model "$work/model.bin" 2>&1)"
[[ "$out" == *"@2 "* && "$out" == *"sent 0 B"* ]] || fail "second save through B: $out"

step "server A stopped: B goes on"
podman stop -t 40 "$(service_container ckpt-a)" >/dev/null
head -c 100000 /dev/urandom >"$work/small.bin"
CKPT_TOKEN="$writer_token" ckpt_at "$b" put ctest/run-1/small "$work/small.bin"
CKPT_TOKEN="$writer_token" ckpt_at "$b" get ctest/run-1/model@1 "$work/again.bin"
cmp "$work/model.bin" "$work/again.bin" || fail "B lost data while A was down"
podman start "$(service_container ckpt-a)" >/dev/null
wait_healthy "$(service_container ckpt-a)"
CKPT_TOKEN="$writer_token" ckpt_at "$a" get ctest/run-1/small "$work/small-a.bin"
cmp "$work/small.bin" "$work/small-a.bin" || fail "A does not see what B saved"

step "recreate everything (down, up): the cluster's volume keeps the data"
compose down >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; fail "down failed"; }
podman volume exists "${project}_ceph-data" || fail "volume ${project}_ceph-data gone after down"
up
ceph_addr_2="$(podman exec "$(service_container ceph)" cat /etc/ckpt-ceph/ready)"
step "cluster on $ceph_addr_2 (was $ceph_addr_1)"
CKPT_TOKEN="$writer_token" ckpt_at "$a" get ctest/run-1/model@best "$work/after.bin"
cmp "$work/model.bin" "$work/after.bin" || fail "data changed across down/up"
out="$(CKPT_TOKEN="$admin_token" ckpt_at "$b" ls ctest/ --json)"
[[ "$(python3 -c 'import json,sys; print(sorted(c["name"] for c in json.load(sys.stdin)))' <<<"$out")" == \
  "['ctest/run-1/model', 'ctest/run-1/small']" ]] || fail "listing after down/up: $out"

step "down -v"
compose down -v >/dev/null 2>&1
podman volume exists "${project}_ceph-data" && fail "volume left after down -v"
step "PASS in $((SECONDS - t0)) s"
