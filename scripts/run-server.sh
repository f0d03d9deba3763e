#!/usr/bin/env bash
# Installs what ckpt-server and the ckpt CLI need (Debian packages for the
# build, and grpcurl; no LibTorch, no PyTorch: scripts/test.sh installs
# those), builds both, and starts ckpt-server in the foreground on its
# embedded default: a RocksDB directory (./ckpt-data, or $CKPT_DATA_DIR),
# listening on 0.0.0.0:50051 (or $CKPT_LISTEN).
# Any arguments are passed to ckpt-server (see `ckpt-server --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" --server-only ckpt-server ckpt
echo "run-server: the CLI is $build/cli/ckpt (e.g. $build/cli/ckpt ls); grpcurl is on PATH" >&2
exec "$build/server/ckpt-server" --data-dir "${CKPT_DATA_DIR:-$root/ckpt-data}" "$@"
