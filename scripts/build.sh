#!/usr/bin/env bash
# Installs what is missing, configures and builds ckpt into ./build (or
# $CKPT_BUILD_DIR). Extra arguments are passed to ninja (e.g. a target name).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"

"$root/scripts/install-deps.sh"

jobs="${CKPT_JOBS:-$(nproc)}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${CKPT_BUILD_TYPE:-RelWithDebInfo}"
fi
ninja -C "$build" -j"$jobs" "$@"
