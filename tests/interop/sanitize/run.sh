#!/usr/bin/env bash
# The interop library under AddressSanitizer + UndefinedBehaviorSanitizer,
# and its libFuzzer targets (clang from Debian). Run by CTest (label interop):
#
#   run.sh build BUILD_DIR            configure (clang) and build
#   run.sh test BUILD_DIR             the codec and malformed-file tests
#   run.sh fuzz BUILD_DIR NAME SECS   fuzz NAME (pickle, safetensors,
#                                     checkpoint) for SECS seconds from the
#                                     committed seed corpus
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="$1"
build="$2"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
case "$mode" in
  build)
    if ! command -v clang++ >/dev/null; then
      echo "clang++ not found: scripts/install-deps.sh installs clang and libclang-rt-14-dev" >&2
      exit 1
    fi
    if [[ ! -f "$build/build.ninja" ]]; then
      cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None \
        -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
    fi
    ninja -C "$build" -j"${CKPT_JOBS:-$(nproc)}"
    ;;
  test)
    "$build/interop_codec_test" --gtest_brief=1
    ;;
  fuzz)
    name="$3"
    secs="$4"
    work="$build/fuzz-work/$name"
    rm -rf "$work"
    mkdir -p "$work"
    # New inputs go to the scratch directory; the committed seeds stay as they are.
    "$build/${name}_fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 "$work" "$here/../fuzz/corpus/$name" 2>&1 |
      tail -25
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: run.sh build|test|fuzz BUILD_DIR [NAME SECS]" >&2
    exit 2
    ;;
esac
