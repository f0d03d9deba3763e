#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# with CTest. Extra arguments go to ctest (e.g. -L unit, -R Crash).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j"${CKPT_TEST_JOBS:-2}" --timeout 900 "$@"
