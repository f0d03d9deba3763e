#!/usr/bin/env bash
# Installs what is missing, builds, and starts ckpt-server in the foreground
# on its embedded default: a RocksDB directory (./ckpt-data, or
# $CKPT_DATA_DIR), listening on 0.0.0.0:50051 (or $CKPT_LISTEN).
# Any arguments are passed to ckpt-server (see `ckpt-server --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" ckpt-server ckpt
exec "$build/server/ckpt-server" --data-dir "${CKPT_DATA_DIR:-$root/ckpt-data}" "$@"
