#!/usr/bin/env bash
# The benchmarks and examples say what they do (--help, exit 0, without
# starting anything) and refuse what they do not know (exit non-zero, at
# once). Arguments: NAME=PATH of each binary to check.
set -uo pipefail
fail=0
check() {  # WHAT WANT_RC CMD... : runs CMD (10 s at most), compares its exit code
  local what="$1" want="$2"; shift 2
  local out rc
  out="$(timeout 10 "$@" 2>&1)"; rc=$?
  if [[ "$want" == nonzero && ( $rc -eq 0 || $rc -eq 124 ) ]] || [[ "$want" != nonzero && $rc -ne $want ]]; then
    echo "FAIL: $what: exit $rc (want $want): $*"; echo "$out" | head -5; fail=1
  fi
  printf '%s' "$out"
}
for pair in "$@"; do
  name="${pair%%=*}" bin="${pair#*=}"
  help="$(check "$name --help" 0 "$bin" --help)"
  grep -q "Usage" <<<"$help" || { echo "FAIL: $name --help prints no usage"; fail=1; }
  check "$name --no-such-flag" nonzero "$bin" --no-such-flag >/dev/null
  case "$name" in
    bench_*) check "$name with a stray argument" nonzero "$bin" localhost:50051 >/dev/null ;;
    *) check "$name with two addresses" 2 "$bin" localhost:1 localhost:2 >/dev/null ;;
  esac
  if [[ "$name" == bench_torch ]]; then
    out="$(check "bench_torch --python nosuch" 2 "$bin" --python no-such-python-here)"
    grep -q "no such program" <<<"$out" || { echo "FAIL: --python nosuch: $out"; fail=1; }
    grep -q "a path or a command name" <<<"$help" || { echo "FAIL: --help does not say --python takes a command name"; fail=1; }
  fi
done
((fail == 0)) && echo "tool_args_test: ok"
exit $fail
