#!/usr/bin/env bash
# What scripts/run-server.sh installs: the server's and the CLI's build
# packages only (issue: it used to pull LibTorch, Debian's python3-torch and
# PyPI's torch wheel just to start a server), while the test command's set
# has everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fail() { echo "scripts_test: $*" >&2; exit 1; }

server="$("$root/scripts/install-deps.sh" --server --list)"
full="$("$root/scripts/install-deps.sh" --list)"
for p in libgrpc++-dev librocksdb-dev libcli11-dev prometheus-cpp-dev libcivetweb-dev cmake ninja-build; do
  grep -qx "$p" <<<"$server" || fail "--server lacks $p"
done
for p in libtorch-dev python3-torch libgtest-dev libgmock-dev libbenchmark-dev clang chromium chromium-driver \
  python3-selenium; do
  grep -qx "$p" <<<"$server" && fail "--server installs $p, which only the tests need"
  grep -qx "$p" <<<"$full" || fail "the default set lacks $p"
done
[[ -z "$("$root/scripts/install-deps.sh" --python --list)" ]] || fail "--python installs Debian packages"
# run-server.sh builds through the server-only path, and only the two binaries.
grep -q 'scripts/build.sh" --server-only ckpt-server ckpt' "$root/scripts/run-server.sh" ||
  fail "run-server.sh does not build with --server-only"
grep -q 'install-deps.sh" --server$' "$root/scripts/build.sh" || fail "build.sh --server-only"
if "$root/scripts/install-deps.sh" --bogus >/dev/null 2>&1; then fail "--bogus accepted"; fi
echo "scripts_test: ok"
