#!/usr/bin/env bash
# scripts/ceph-dev-cluster.sh keeps what the cluster holds across `up` after
# its daemons died (a reboot, a container restart), moves it when its
# address changed (a container's), and `stop` leaves nothing: start, write
# an object, kill -9 the daemons, `up`, read it back; `halt`, `up` on
# another address (127.0.0.2), read it back there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
script="$root/scripts/ceph-dev-cluster.sh"
dir="$(mktemp -d /tmp/ckpt-ceph-restart-XXXXXX)/c"
trap 'bash "$script" stop "$dir"; rm -rf "$(dirname "$dir")"' EXIT
fail() { echo "ceph_dev_cluster_test: $*" >&2; exit 1; }

conf="$(bash "$script" start "$dir" 1)"
[[ "$conf" == "$dir/ceph.conf" ]] || fail "start printed '$conf'"
echo "kept across a restart" >"$dir/../object"
rados -c "$conf" --id ckpt -p ckpt put probe "$dir/../object"
pkill -9 -f -- "-c $dir/ceph.conf"
sleep 1
bash "$script" up "$dir" 1 >/dev/null
[[ "$(rados -c "$conf" --id ckpt -p ckpt get probe -)" == "kept across a restart" ]] ||
  fail "the object did not survive the restart"
bash "$script" halt "$dir"
[[ -e "$dir/ceph.conf" ]] || fail "halt deleted the cluster"
pgrep -f -- "-c $dir/ceph.conf" >/dev/null && fail "halt left daemons running"
CEPH_DEV_ADDR=127.0.0.2 bash "$script" up "$dir" 1 >/dev/null
grep -q '^mon host = \[v2:127.0.0.2:' "$conf" || fail "ceph.conf not moved: $(grep 'mon host' "$conf")"
[[ "$(rados -c "$conf" --id ckpt -p ckpt get probe -)" == "kept across a restart" ]] ||
  fail "the object did not survive the move to 127.0.0.2"
bash "$script" stop "$dir"
[[ ! -e "$dir" ]] || fail "stop left $dir"
pgrep -f -- "-c $dir/ceph.conf" >/dev/null && fail "stop left daemons running"
echo "ceph_dev_cluster_test: ok"
