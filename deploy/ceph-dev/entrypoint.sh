#!/usr/bin/env bash
# Entry point of the ckpt-ceph-dev image (deploy/ceph-dev/Dockerfile): starts
# the cluster in /var/lib/ckpt-ceph on this container's address (moving it
# there if the container's address changed since the last start), publishes
# the client configuration in /etc/ckpt-ceph, and stops the daemons, data
# kept, on SIGTERM.
set -euo pipefail

data=/var/lib/ckpt-ceph/cluster
etc=/etc/ckpt-ceph
addr=${CEPH_DEV_ADDR:-$(hostname -i | awk '{print $1}')}

rm -f "$etc/ready"
CEPH_DEV_ADDR=$addr CEPH_DEV_PORT=3300 ceph-dev-cluster.sh up "$data" 1 >/dev/null

# What a server needs: the monitor's address and client.ckpt's key, readable
# by the servers' user (uid 10001). Written before `ready`.
{
  echo "[global]"
  grep -E '^(fsid|mon host|ms bind msgr1) = ' "$data/ceph.conf"
  echo "keyring = $etc/ceph.client.ckpt.keyring"
} >"$etc/ceph.conf.new"
{
  echo "[client.ckpt]"
  echo "  key = $(ceph-authtool "$data/keyring" -n client.ckpt --print-key)"
} >"$etc/ceph.client.ckpt.keyring.new"
chmod 644 "$etc/ceph.conf.new" "$etc/ceph.client.ckpt.keyring.new"
mv "$etc/ceph.client.ckpt.keyring.new" "$etc/ceph.client.ckpt.keyring"
mv "$etc/ceph.conf.new" "$etc/ceph.conf"
echo "$addr" >"$etc/ready"
echo "ckpt-ceph-dev: cluster up on $addr:3300, pool ckpt, client.ckpt (config in $etc)"

stopping=0
trap 'stopping=1' TERM INT
# Runs as long as the monitor does.
while ((stopping == 0)) && pgrep -f -- "-c $data/ceph.conf -i a" >/dev/null; do
  sleep 1 &
  wait $! || true
done
rm -f "$etc/ready"
ceph-dev-cluster.sh halt "$data"
if ((stopping == 0)); then
  echo "ckpt-ceph-dev: the monitor stopped (see $data/log)" >&2
  exit 1
fi
