#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# with CTest. Extra arguments go to ctest (e.g. -L unit, -R Crash).
#
# The LibTorch client's tests run twice: against Debian's LibTorch 1.13 (in
# ./build, with everything else) and against the current LibTorch 2.x inside
# PyPI's torch wheel (in ./build-torch2; CKPT_SKIP_TORCH2=1 skips it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CKPT_BUILD_DIR:-$root/build}"
jobs="${CKPT_JOBS:-$(nproc)}"
"$root/scripts/build.sh"
source "$root/scripts/python-env.sh"  # the python3 install-deps.sh installed into
ckpt_python_env "$root"

if [[ "${CKPT_SKIP_TORCH2:-0}" != 1 && $# -eq 0 ]]; then
  # Every LibTorch path points into the wheel: left to search, CMake would
  # find Debian's Caffe2 config and libtorch.so in /usr/lib first.
  torch2="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')" || {
    echo "test.sh: the PATH python3 has no torch (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
  # libtorch_cuda.so needs the wheels' own NCCL/cuDNN/...; at link time ld must
  # look there rather than at the CUDA toolkit's older copies.
  nvidia_libs="$(python3 -c 'import os, torch; d = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia"); print(":".join(sorted(os.path.join(d, x, "lib") for x in os.listdir(d) if os.path.isdir(os.path.join(d, x, "lib")))) if os.path.isdir(d) else "")')"
  build2="${CKPT_BUILD_DIR_TORCH2:-$root/build-torch2}"
  if [[ ! -f "$build2/build.ninja" ]]; then
    cmake -S "$root" -B "$build2" -G Ninja -DTorch_DIR="$torch2/share/cmake/Torch" \
      -DCaffe2_DIR="$torch2/share/cmake/Caffe2" -DTORCH_LIBRARY="$torch2/lib/libtorch.so" \
      -Dc10_LIBRARY="$torch2/lib/libc10.so" \
      "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$nvidia_libs" \
      -DCMAKE_BUILD_TYPE="${CKPT_BUILD_TYPE:-RelWithDebInfo}"
  fi
  ninja -C "$build2" -j"$jobs" ckpt-server client_test optimizer_test examples_test gpu_test save_async_test
  echo "== LibTorch client tests against LibTorch $(python3 -c 'import torch; print(torch.__version__)')"
  (cd "$build2" && ctest --output-on-failure -j"${CKPT_TEST_JOBS:-2}" --timeout 900 -L 'client|gpu')
fi

echo "== The whole test suite (LibTorch $(dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null || echo '?'))"
cd "$build"
ctest --output-on-failure -j"${CKPT_TEST_JOBS:-2}" --timeout 900 "$@"
