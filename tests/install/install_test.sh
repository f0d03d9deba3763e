#!/usr/bin/env bash
# ckpt as a library for other projects, as a user would take it:
#   1. `cmake --install` of this build into a fresh prefix; an outside CMake
#      project finds it with find_package(ckpt) (ckpt::client_core, and
#      ckpt::client with LibTorch), builds, and runs against a real server;
#   2. the same client-core program built with pkg-config (ckpt.pc) alone;
#   3. a CKPT_BUILD_SERVER=OFF configuration needs neither RocksDB nor
#      prometheus-cpp (configured with both hidden);
#   4. a project that add_subdirectory()s ckpt links ckpt_client without its
#      own find_package(Torch) (configured: the link line names LibTorch).
# Usage: install_test.sh SOURCE_DIR BUILD_DIR CKPT_SERVER_BINARY
set -euo pipefail
src="$1" build="$2" server_bin="$3"
tmp="$(mktemp -d)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill -9 "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "cmake --install into $tmp/prefix"
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/ckpt/client/raw_client.h lib/cmake/ckpt/ckptConfig.cmake \
         lib/cmake/ckpt/ckptConfigVersion.cmake lib/pkgconfig/ckpt.pc bin/ckpt; do
  [[ -f "$tmp/prefix/$f" ]] || fail "$f not installed"
done

step "find_package(ckpt) from an outside project"
cmake -S "$src/tests/install/consumer" -B "$tmp/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >"$tmp/configure.log" 2>&1 ||
  { cat "$tmp/configure.log"; fail "configuring the consumer"; }
ninja -C "$tmp/consumer" >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log"; fail "building the consumer"; }
has_torch=0
[[ -f "$tmp/prefix/lib/libckpt_client.a" ]] && has_torch=1
if ((has_torch)); then
  [[ -x "$tmp/consumer/torch_consumer" ]] || fail "ckpt::client was installed but not found"
fi

step "pkg-config --cflags --libs ckpt"
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --modversion ckpt >/dev/null ||
  fail "pkg-config cannot read ckpt.pc"
# shellcheck disable=SC2046
g++ -std=c++17 -O1 "$src/tests/install/consumer/raw_consumer.cc" -o "$tmp/raw_pkgconfig" \
  $(PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --cflags --libs ckpt) ||
  fail "building with pkg-config"

step "the programs against a real server"
"$server_bin" --data-dir "$tmp/db" --listen 127.0.0.1:0 --metrics-listen "" \
  2>"$tmp/server.log" &
server_pid=$!
port=""
for _ in $(seq 300); do
  port="$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$tmp/server.log")"
  [[ -n "$port" ]] && break
  sleep 0.1
done
[[ -n "$port" ]] || { cat "$tmp/server.log"; fail "the server did not start"; }
out="$("$tmp/consumer/raw_consumer" "127.0.0.1:$port")" || fail "raw_consumer: $out"
[[ "$out" == "ok 1" ]] || fail "raw_consumer printed '$out'"
out="$("$tmp/raw_pkgconfig" "127.0.0.1:$port")" || fail "pkg-config build: $out"
[[ "$out" == "ok 2" ]] || fail "pkg-config build printed '$out'"
if ((has_torch)); then
  out="$("$tmp/consumer/torch_consumer" "127.0.0.1:$port")" || fail "torch_consumer: $out"
  [[ "$out" == "ok" ]] || fail "torch_consumer printed '$out'"
fi

step "CKPT_BUILD_SERVER=OFF without RocksDB and prometheus-cpp"
cmake -S "$src" -B "$tmp/client-only" -G Ninja -DCKPT_BUILD_SERVER=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_RocksDB=ON -DCMAKE_DISABLE_FIND_PACKAGE_prometheus-cpp=ON \
  >"$tmp/client-only.log" 2>&1 || { cat "$tmp/client-only.log"; fail "client-only configure"; }
grep -qi "rocksdb\|prometheus" "$tmp/client-only/build.ninja" &&
  fail "the client-only build still refers to RocksDB or prometheus-cpp"
grep -q "build cli/ckpt:" "$tmp/client-only/build.ninja" || fail "no CLI in the client-only build"

if ((has_torch)); then
  step "add_subdirectory(ckpt) without find_package(Torch) in the parent"
  cmake -S "$src/tests/install/subdir" -B "$tmp/subdir" -G Ninja -DCKPT_SOURCE_DIR="$src" \
    >"$tmp/subdir.log" 2>&1 || { cat "$tmp/subdir.log"; fail "configuring the vendoring project"; }
  link="$(grep -A3 "^build torch_consumer:" "$tmp/subdir/build.ninja" | grep LINK_LIBRARIES || true)"
  grep -q "libtorch" <<<"$link" || fail "torch_consumer does not link LibTorch: $link"
  grep -qw -- "-ltorch" <<<"$link" && fail "torch is an unknown name in the parent: $link"
fi
echo "install_test: ok"
