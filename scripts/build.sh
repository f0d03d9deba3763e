#!/usr/bin/env bash
# Installs what is missing, configures and builds ckpt into ./build (or
# $CKPT_BUILD_DIR). Extra arguments are passed to ninja (e.g. a target name).
#
#   scripts/build.sh [TARGET...]                everything: the tests, benchmarks,
#                                               LibTorch client and Python package
#   scripts/build.sh --server-only [TARGET...]  only what ckpt-server and ckpt need
#                                               (scripts/run-server.sh): no LibTorch,
#                                               no test libraries, no PyTorch
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"

server_only=0
if [[ "${1:-}" == --server-only ]]; then
  server_only=1
  shift
fi

if ((server_only)); then
  "$root/scripts/install-deps.sh" --server
else
  "$root/scripts/install-deps.sh"
fi
source "$root/scripts/python-env.sh"  # the python3 install-deps.sh installed into
ckpt_python_env "$root"

jobs="${CKPT_JOBS:-$(nproc)}"
if [[ ! -f "$build/build.ninja" ]]; then
  tests=ON
  if ((server_only)); then tests=OFF; fi
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${CKPT_BUILD_TYPE:-RelWithDebInfo}" \
    -DCKPT_BUILD_TESTS="$tests" -DCKPT_BUILD_BENCH="$tests"
elif ((!server_only)) && grep -qE '^CKPT_BUILD_(TESTS|BENCH):BOOL=OFF' "$build/CMakeCache.txt"; then
  # Configured by scripts/run-server.sh before the test libraries were there.
  cmake "$build" -DCKPT_BUILD_TESTS=ON -DCKPT_BUILD_BENCH=ON
fi
ninja -C "$build" -j"$jobs" "$@"
