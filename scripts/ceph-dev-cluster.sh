#!/usr/bin/env bash
# A throw-away single-node Ceph cluster for the RADOS backend's tests and for
# trying `ckpt-server --store rados` by hand: one monitor and 1-3 OSDs whose
# BlueStore lives in sparse files, on 127.0.0.1, cephx on, no manager (the
# RADOS API needs none), in a directory of its own.
#
#   scripts/ceph-dev-cluster.sh start DIR [OSDS]   starts it (OSDS: 1-3, default 1);
#                                                  prints the ceph.conf path
#   scripts/ceph-dev-cluster.sh up DIR [OSDS]      starts the cluster DIR holds again
#                                                  (its data kept), or a new one
#   scripts/ceph-dev-cluster.sh halt DIR           stops its daemons, keeps DIR
#   scripts/ceph-dev-cluster.sh stop DIR           stops it and deletes DIR
#   scripts/ceph-dev-cluster.sh env DIR            prints the CKPT_* exports a server needs
#
# CEPH_DEV_ADDR: the address the daemons bind to (default 127.0.0.1; a
# container's own address to serve other containers: `up` moves a cluster
# whose address changed). CEPH_DEV_PORT: the monitor's port (default: one
# the kernel says is free).
#
# In DIR: ceph.conf, keyring (client.admin and client.ckpt), the pool "ckpt",
# with 3 OSDs also the erasure-coded pool "ckpt-data" (k=2, m=1: for
# --rados-data-pool), logs, and pid files. The monitor's port is one the kernel said was free; a
# port taken meanwhile makes the start try another. A cluster left behind by
# a killed run in DIR is stopped first; `stop` on a directory whose daemons
# are gone only deletes it. Needs Debian's ceph-mon and ceph-osd
# (scripts/install-deps.sh installs them).
set -euo pipefail

usage() { echo "usage: $0 start DIR [OSDS] | up DIR [OSDS] | halt DIR | stop DIR | env DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
osds=${3:-1}

addr=${CEPH_DEV_ADDR:-127.0.0.1}

free_port() {
  if [[ -n "${CEPH_DEV_PORT:-}" ]]; then echo "$CEPH_DEV_PORT"; return; fi
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

stop_daemons() {
  local pidfile pid
  for pidfile in "$dir"/run/*.pid; do
    [[ -e "$pidfile" ]] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    # Only a daemon of this cluster: a stale pid file's number may belong to
    # another process by now.
    if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
      grep -qF -- "-c $dir/ceph.conf"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  # Daemons whose pid file was never written (a start killed half way).
  pkill -9 -f -- "-c $dir/ceph.conf" 2>/dev/null || true
}

ceph_() { timeout 60 ceph -c "$dir/ceph.conf" --connect-timeout 30 "$@"; }

start() {
  [[ "$osds" =~ ^[1-3]$ ]] || { echo "OSDS must be 1, 2 or 3" >&2; exit 2; }
  if [[ -e "$dir/ceph.conf" ]]; then stop_daemons; fi
  rm -rf "$dir"
  mkdir -p "$dir"/{run,log,mon.a}
  local fsid port attempt
  fsid=$(uuid)
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    cat >"$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:$addr:$port]
public addr = $addr
ms bind msgr1 = false
keyring = $dir/keyring
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon osd full ratio = 0.99
mon osd backfillfull ratio = 0.99
mon osd nearfull ratio = 0.99
mon data = $dir/mon.\$id
osd data = $dir/osd.\$id
osd objectstore = bluestore
bluestore block path = $dir/osd.\$id/block.file
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 536870912
osd op num shards = 1
osd op num threads per shard = 2
[mon]
run dir = $dir/run
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
[osd]
run dir = $dir/run
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
CONF
    if [[ ! -e "$dir/keyring" ]]; then
      ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
      ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' \
        --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
      ceph-authtool "$dir/keyring" --gen-key -n client.ckpt --cap mon 'allow r' \
        --cap osd 'allow rwx pool=ckpt' >/dev/null
    fi
    rm -rf "$dir/mon.a" "$dir/monmap"
    mkdir -p "$dir/mon.a"
    monmaptool --create --addv a "[v2:$addr:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" \
      2>>"$dir/log/setup.log"
    if ceph-mon -c "$dir/ceph.conf" -i a 2>>"$dir/log/setup.log" && ceph_ status >/dev/null 2>&1; then
      break
    fi
    stop_daemons
    if [[ $attempt == 5 ]]; then
      echo "ceph-dev-cluster: the monitor did not start (see $dir/log)" >&2
      exit 1
    fi
  done
  ceph_ auth import -i "$dir/keyring" >/dev/null 2>&1 || true
  local i id osd_uuid
  for ((i = 0; i < osds; i++)); do
    osd_uuid=$(uuid)
    id=$(ceph_ osd new "$osd_uuid")
    mkdir -p "$dir/osd.$id"
    ceph-authtool --create-keyring "$dir/osd.$id/keyring" --gen-key -n "osd.$id" >/dev/null
    ceph_ auth add "osd.$id" osd 'allow *' mon 'allow profile osd' -i "$dir/osd.$id/keyring" \
      >/dev/null 2>&1
    ceph-osd -c "$dir/ceph.conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" \
      --keyring "$dir/osd.$id/keyring" >>"$dir/log/setup.log" 2>&1
    ceph-osd -c "$dir/ceph.conf" -i "$id" --keyring "$dir/osd.$id/keyring" \
      >>"$dir/log/setup.log" 2>&1
  done
  ceph_ osd pool create ckpt 8 >/dev/null 2>&1
  ceph_ osd pool application enable ckpt ckpt >/dev/null 2>&1 || true
  if ((osds == 3)); then
    ceph_ osd erasure-code-profile set ckpt-ec k=2 m=1 crush-failure-domain=osd >/dev/null 2>&1
    ceph_ osd pool create ckpt-data 8 8 erasure ckpt-ec >/dev/null 2>&1
    ceph_ osd pool set ckpt-data allow_ec_overwrites true >/dev/null 2>&1
    ceph_ osd pool application enable ckpt-data ckpt >/dev/null 2>&1 || true
    touch "$dir/data-pool"
  fi
  wait_writable
  echo "$dir/ceph.conf"
}

wait_writable() {
  local deadline=$((SECONDS + 120))
  local pool
  for pool in ckpt $([[ -e "$dir/data-pool" ]] && echo ckpt-data); do
    until timeout 20 rados -c "$dir/ceph.conf" -p "$pool" put ceph-dev-cluster-probe \
      "$dir/ceph.conf" 2>/dev/null; do
      if ((SECONDS > deadline)); then
        echo "ceph-dev-cluster: pool $pool did not become writable (see $dir/log)" >&2
        exit 1
      fi
      sleep 0.5
    done
    rados -c "$dir/ceph.conf" -p "$pool" rm ceph-dev-cluster-probe
  done
}

# Starts the daemons of the cluster already in DIR (after a reboot or a
# container restart): its data is kept. A cluster whose address changed (a
# container's) is moved to CEPH_DEV_ADDR first: the monitor's map and
# ceph.conf are rewritten.
restart() {
  stop_daemons
  mkdir -p "$dir/run" "$dir/log"
  local old port
  old=$(sed -n 's/^public addr = //p' "$dir/ceph.conf")
  if [[ "$old" != "$addr" ]]; then
    port=$(sed -n 's/^mon host = \[v2:.*:\([0-9]*\)\]$/\1/p' "$dir/ceph.conf")
    port=${CEPH_DEV_PORT:-$port}
    ceph-mon -c "$dir/ceph.conf" -i a --extract-monmap "$dir/monmap" 2>>"$dir/log/setup.log"
    monmaptool --rm a "$dir/monmap" >/dev/null
    monmaptool --addv a "[v2:$addr:$port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$dir/ceph.conf" -i a --inject-monmap "$dir/monmap" 2>>"$dir/log/setup.log"
    sed -i -e "s/^mon host = .*/mon host = [v2:$addr:$port]/" -e "s/^public addr = .*/public addr = $addr/" \
      "$dir/ceph.conf"
  fi
  ceph-mon -c "$dir/ceph.conf" -i a 2>>"$dir/log/setup.log"
  local osd id
  for osd in "$dir"/osd.*; do
    id=${osd##*.}
    ceph-osd -c "$dir/ceph.conf" -i "$id" --keyring "$osd/keyring" >>"$dir/log/setup.log" 2>&1
  done
  wait_writable
  echo "$dir/ceph.conf"
}

case "$cmd" in
  start) start ;;
  up) if [[ -e "$dir/ceph.conf" && -d "$dir/mon.a" ]]; then restart; else start; fi ;;
  halt) if [[ -d "$dir" ]]; then stop_daemons; fi ;;
  stop)
    if [[ -d "$dir" ]]; then stop_daemons; rm -rf "$dir"; fi
    ;;
  env)
    echo "export CKPT_STORE=rados CKPT_RADOS_CONF=$dir/ceph.conf CKPT_RADOS_POOL=ckpt CKPT_RADOS_ID=ckpt" \
      "$([[ -e "$dir/data-pool" ]] && echo CKPT_RADOS_DATA_POOL=ckpt-data)"
    ;;
  *) usage ;;
esac
