#!/usr/bin/env bash
# One-shot GPU check (issue 14): runs every GPU test (tests/gpu/gpu_test) with
# CKPT_REQUIRE_GPU=1 on a lent GPU machine and writes the results into one
# file, in a few minutes.
#
#   scripts/gpu-check.sh bundle        # here, on a build machine (Debian)
#   scripts/gpu-check.sh run [OUTDIR]  # on the GPU machine (OUTDIR: $OUT or .)
#
# Why two steps, and what runs where
# ----------------------------------
# The GPU machine has CUDA 13, CMake, ninja, a C++ compiler and a Python with
# PyTorch 2.x (CUDA) -- its LibTorch lives inside that torch package -- but
# none of our Debian libraries (gRPC, protobuf, Abseil, RocksDB,
# prometheus-cpp, ...), no apt and no network. Its torch is not ours (2.11
# there, 2.15 here): LibTorch has no stable C++ ABI, so a gpu_test linked here
# against our wheel cannot be trusted with its libraries, and the torch
# libraries themselves (~1 GB, libtorch_cuda.so alone 520 MB) are far too big
# to carry (64 MiB). So:
#
#  * `bundle` (here) builds, with the Debian build tree (./build), everything
#    that does not include LibTorch -- the server, storage, RPC, client core,
#    test helpers -- and packs into build-gpu-bundle/ckpt-gpu-bundle.tar.gz
#    (ignored by git, ~20-30 MiB): those static libraries (debug info
#    stripped), every Debian shared library they need (ldd closure, minus
#    glibc and libstdc++/libgcc_s, which go to lib/compat for old targets),
#    the Abseil and GoogleTest headers, the link line, and a stamp of our
#    headers.
#  * `run` (device) compiles the five translation units that include LibTorch
#    (client/{client,modules,staging,torch_tree}.cc, tests/gpu/gpu_test.cc)
#    against the device's own torch (its headers, its C++ ABI), links them with
#    the bundle and the device's torch libraries, checks that every library
#    resolves (ldd), runs gpu_test with CKPT_REQUIRE_GPU=1 and writes
#    OUTDIR/gpu-check.txt (environment, build log, ldd, full test output) and
#    OUTDIR/gpu_test.xml. Exit status: gpu_test's (non-zero on any failure).
#
# The sources compiled on the device come from this working tree; the
# bundle's libraries were compiled from the tree at `bundle` time: `run`
# refuses to go on if our headers changed since (rebuild the bundle).
# Rehearsal here (no GPU): `bundle`, then `run` with the wheel's torch: every
# test fails with "CKPT_REQUIRE_GPU=1 but no CUDA device here", which proves
# the bundle compiles, links and loads. GPU benchmark (issue
# 12, point 7): tests/gpu/gpu_bench (GPT-2 + Adam from/to the GPU beside a
# bare pinned copy and the CPU figures) runs after the tests, output in the
# same file.
#
# Risks noted: the bundle's shared libraries need glibc >= the version printed
# in the stamp (checked on the device); a device compiler older than GCC 12
# gets Debian's libstdc++ from lib/compat (checked by symbol version).
#
# A session lent a GPU machine: first `scripts/gpu-check.sh bundle` here (a
# few seconds once ./build is built), then one call of the device tool:
#   command: scripts/gpu-check.sh run "$OUT"   carry: ["build-gpu-bundle"]
#   timeout_s: 540 (about 1-2 min of compiling on 16 cores, 1-3 min of tests)
# and read $OUT/gpu-check.txt.
#
# Environment: CKPT_BUILD_DIR (default ./build), PYTHON (python3 with torch),
# CXX (c++), CUDA_HOME (/usr/local/cuda), CKPT_GPU_TEST_TIMEOUT (300 s), CKPT_GPU_BENCH_TIMEOUT (150 s), CKPT_GPU_BENCH_SCALE (1),
# CKPT_GPU_WORK (where `run` builds; default build-gpu-check/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle_dir="$root/build-gpu-bundle"
bundle_tar="$bundle_dir/ckpt-gpu-bundle.tar.gz"
mode="${1:-}"

# Our headers that the device-compiled units share with the bundle's
# libraries: a change makes the bundle stale.
headers_stamp() {
  (cd "$root" && find client common server storage rpc tests/testing -name '*.h' -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

case "$mode" in
bundle)
  build="${CKPT_BUILD_DIR:-$root/build}"
  [[ -f "$build/build.ninja" ]] || { echo "gpu-check: no $build (run scripts/build.sh)" >&2; exit 1; }
  ninja -C "$build" gpu_test gpu_bench >/dev/null
  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/stage/lib/compat" "$bundle_dir/stage/include"
  ninja -C "$build" -t commands tests/gpu/gpu_test | tail -1 >"$bundle_dir/link-debian.txt"
  python3 - "$build" "$bundle_dir/stage" "$bundle_dir/link-debian.txt" <<'PY'
import os, re, shutil, subprocess, sys
build, stage, link_file = sys.argv[1:4]
args = open(link_file).read().split()
# ": && c++ ... && cd ... && cmake (test discovery) && :": the link is the second piece.
pieces, cur = [], []
for a in args:
    if a == "&&":
        pieces.append(cur); cur = []
    else:
        cur.append(a)
pieces.append(cur)
args = next(p for p in pieces if any(x.endswith("c++") or x.endswith("g++") for x in p))
lib = os.path.join(stage, "lib")
SYSTEM = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
          "ld-linux-x86-64.so.2", "linux-vdso.so.1", "libresolv.so.2", "libutil.so.1"}
COMPAT = {"libstdc++.so.6", "libgcc_s.so.1"}
TORCH = re.compile(r"(torch|c10|caffe2|glog|libgomp|openblas|nvrtc|cudart|/cuda)", re.I)

def soname(path):
    out = subprocess.run(["objdump", "-p", path], capture_output=True, text=True).stdout
    m = re.search(r"SONAME\s+(\S+)", out)
    return m.group(1) if m else os.path.basename(path)

copied = {}
def bundle_so(path):
    real = os.path.realpath(path)
    name = soname(real)
    if name in SYSTEM:
        return None
    dest_dir = os.path.join(lib, "compat") if name in COMPAT else lib
    if name not in copied:
        shutil.copyfile(real, os.path.join(dest_dir, name))
        copied[name] = real
    return name

link = []  # the device link line, bundle-relative
for a in args:
    if a.endswith(".o") or a in (":", "&&", "-o") or a.startswith("-O") or a == "-g" \
            or a.startswith("-D") or a.startswith("-L") or a.startswith("-Wl,") \
            or a.startswith("tests/gpu/gpu_test") or a.endswith("/c++") or a.endswith("g++"):
        continue
    if a in ("-pthread", "-ldl", "-lm", "-lrt", "-lpthread", "-latomic"):
        link.append(a)
    elif a.startswith("-l"):
        name = bundle_so("/usr/lib/x86_64-linux-gnu/lib%s.so" % a[2:])
        if name: link.append("lib/" + name)
    elif TORCH.search(a):
        continue  # LibTorch (and what only it needs) comes from the device
    elif a.endswith(".a") and not a.startswith("/"):
        if a.endswith("libckpt_client.a"):
            continue  # includes LibTorch: compiled on the device
        dest = os.path.join(lib, os.path.basename(a))
        subprocess.run(["strip", "--strip-debug", "-o", dest, os.path.join(build, a)], check=True)
        link.append("lib/" + os.path.basename(a))
    elif a.endswith("librocksdb.a"):
        name = bundle_so("/usr/lib/x86_64-linux-gnu/librocksdb.so")  # 11 MB vs 33 MB
        link.append("lib/" + name)
    elif a.endswith(".a"):
        dest = os.path.join(lib, os.path.basename(a))
        subprocess.run(["strip", "--strip-debug", "-o", dest, a], check=True)
        link.append("lib/" + os.path.basename(a))
    elif ".so" in a:
        name = bundle_so(a)
        if name: link.append("lib/" + name)
    else:
        print("gpu-check: unexpected link argument kept:", a, file=sys.stderr)
        link.append(a)
# gpu_bench: the same libraries plus the benchmarks' helpers.
subprocess.run(["strip", "--strip-debug", "-o", os.path.join(lib, "libckpt_bench_util.a"),
                os.path.join(build, "bench/libckpt_bench_util.a")], check=True)
link.insert(0, "lib/libckpt_bench_util.a")
if "lib/libgtest.a" not in link:  # gtest_main needs gtest
    subprocess.run(["strip", "--strip-debug", "-o", os.path.join(lib, "libgtest.a"),
                    "/usr/lib/x86_64-linux-gnu/libgtest.a"], check=True)
    link.append("lib/libgtest.a")
# Runtime closure of every bundled shared library.
pending = list(copied.values())
while pending:
    out = subprocess.run(["ldd", pending.pop()], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if not m or m.group(1) in SYSTEM or m.group(1) in copied or TORCH.search(m.group(2)):
            continue
        bundle_so(m.group(2))
        pending.append(m.group(2))
open(os.path.join(stage, "link.txt"), "w").write("\n".join(link) + "\n")
# The newest glibc symbol version anything in the bundle needs.
need = set()
for f in os.listdir(lib):
    p = os.path.join(lib, f)
    if os.path.isfile(p):
        out = subprocess.run(["objdump", "-T", p] if ".so" in f else ["nm", "-u", p],
                             capture_output=True, text=True).stdout
        need.update(re.findall(r"GLIBC_(\d+\.\d+)", out))
top = max(need, key=lambda v: tuple(map(int, v.split(".")))) if need else "0"
open(os.path.join(stage, "glibc.txt"), "w").write(top + "\n")
PY
  cp -r /usr/include/absl /usr/include/gtest "$bundle_dir/stage/include/"
  {
    echo "headers=$(headers_stamp)"
    echo "commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo none)"
    echo "made=$(date -u +%FT%TZ) on $(hostname) ($(. /etc/os-release && echo "$PRETTY_NAME"), $(c++ --version | head -1))"
    echo "glibc_needed=$(cat "$bundle_dir/stage/glibc.txt")"
  } >"$bundle_dir/stage/stamp.txt"
  tar -C "$bundle_dir/stage" -czf "$bundle_tar" .
  rm -rf "$bundle_dir/stage"
  size=$(stat -c %s "$bundle_tar")
  echo "gpu-check: $bundle_tar: $((size / 1048576)) MiB"
  if (( size > 60 * 1048576 )); then
    echo "gpu-check: the bundle is over 60 MiB: too big to carry" >&2
    exit 1
  fi
  ;;

run)
  out="${2:-${OUT:-.}}"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  report="$out/gpu-check.txt"
  : >"$report"
  say() { echo "$*" | tee -a "$report"; }
  section() { say ""; say "== $*"; }
  t0=$(date +%s)
  [[ -f "$bundle_tar" ]] || { say "gpu-check: no $bundle_tar (run 'scripts/gpu-check.sh bundle' on a build machine and carry build-gpu-bundle)"; exit 2; }
  work="${CKPT_GPU_WORK:-$root/build-gpu-check}"
  rm -rf "$work"
  mkdir -p "$work/obj"
  tar -C "$work" -xzf "$bundle_tar"

  section "environment"
  say "date: $(date -u +%FT%TZ)  host: $(hostname)  os: $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || uname -a)"
  say "bundle: $(tr '\n' ' ' <"$work/stamp.txt")"
  say "tree: commit $(git -C "$root" rev-parse HEAD 2>/dev/null || echo '?')"
  (nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available") | tee -a "$report"
  python="${PYTHON:-python3}"
  torch_info="$("$python" - <<'PY' 2>&1
import os, torch
print("TORCH_DIR=" + os.path.dirname(torch.__file__))
print("TORCH_VERSION=" + torch.__version__)
print("TORCH_CUDA=" + str(torch.version.cuda))
print("TORCH_ABI=" + str(int(torch.compiled_with_cxx11_abi())))
try:
    print("TORCH_DEVICES=" + str(torch.cuda.device_count() if torch.cuda.is_available() else 0))
except Exception as e:
    print("TORCH_DEVICES=0 (%s)" % e)
d = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
libs = sorted(os.path.join(d, x, "lib") for x in os.listdir(d) if os.path.isdir(os.path.join(d, x, "lib"))) if os.path.isdir(d) else []
print("NVIDIA_LIBS=" + ":".join(libs))
incs = sorted(os.path.join(d, x, "include") for x in os.listdir(d) if os.path.isdir(os.path.join(d, x, "include"))) if os.path.isdir(d) else []
print("NVIDIA_INCS=" + ":".join(incs))
PY
)" || { say "gpu-check: $python cannot import torch: $torch_info"; exit 2; }
  say "$torch_info"
  eval "$(echo "$torch_info" | grep -E '^(TORCH_DIR|TORCH_VERSION|TORCH_ABI|NVIDIA_LIBS|NVIDIA_INCS)=' | sed -E "s/=(.*)/='\1'/")"
  cxx="${CXX:-c++}"
  command -v "$cxx" >/dev/null || { say "gpu-check: no C++ compiler ($cxx)"; exit 2; }
  say "compiler: $("$cxx" --version | head -1)"
  glibc_needed="$(cat "$work/glibc.txt")"
  glibc_here="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
  say "glibc: here $glibc_here, bundle needs $glibc_needed"
  if [[ -n "$glibc_here" ]] && [[ "$(printf '%s\n%s\n' "$glibc_needed" "$glibc_here" | sort -V | head -1)" != "$glibc_needed" ]]; then
    say "gpu-check: this glibc is older than the bundle needs: build the bundle on an older system"
    exit 2
  fi
  if [[ "$TORCH_ABI" != 1 ]]; then
    say "gpu-check: this torch uses the pre-C++11 string ABI; the bundle's libraries use the C++11 one"
    exit 2
  fi
  if [[ "$(headers_stamp)" != "$(sed -n 's/^headers=//p' "$work/stamp.txt")" ]]; then
    say "gpu-check: our headers changed since the bundle was made: run 'scripts/gpu-check.sh bundle' again"
    exit 2
  fi
  # libstdc++: the bundle's objects were compiled by GCC 12; an older runtime
  # lacks their symbol versions.
  libstdcxx="$("$cxx" -print-file-name=libstdc++.so.6)"
  compat_rpath=""
  if ! grep -qa GLIBCXX_3.4.30 "$(readlink -f "$libstdcxx")"; then
    say "libstdc++ $libstdcxx lacks GLIBCXX_3.4.30: using the bundle's (lib/compat)"
    compat_rpath="$work/lib/compat:"
  fi

  cuda_inc=""
  for d in "${CUDA_HOME:-/usr/local/cuda}/include" ${NVIDIA_INCS//:/ }; do
    if [[ -f "$d/cuda_runtime_api.h" ]]; then cuda_inc="$d"; break; fi
  done
  [[ -n "$cuda_inc" ]] || { say "gpu-check: no cuda_runtime_api.h (set CUDA_HOME)"; exit 2; }
  std=-std=c++20
  echo 'int main(){}' | "$cxx" -std=c++20 -x c++ - -o /dev/null 2>/dev/null || std=-std=c++17

  section "build (against torch $TORCH_VERSION at $TORCH_DIR)"
  flags=("$std" -O2 -DNDEBUG -pthread "-D_GLIBCXX_USE_CXX11_ABI=$TORCH_ABI" -DCKPT_TORCH_CUDA=1
         -DCKPT_VERSION=\"gpu-check\" -Wno-unused-parameter -Wno-missing-field-initializers
         -I"$root" -isystem "$work/include" -isystem "$TORCH_DIR/include"
         -isystem "$TORCH_DIR/include/torch/csrc/api/include" -isystem "$cuda_inc")
  launcher="$(command -v ccache || true)"  # rehearsals here; the device has none
  pids=()
  for src in client/client.cc client/modules.cc client/staging.cc client/torch_tree.cc \
             tests/gpu/gpu_test.cc tests/gpu/gpu_bench.cc; do
    obj="$work/obj/$(basename "$src" .cc).o"
    $launcher "$cxx" "${flags[@]}" -MD -MF "$obj.d" -c "$root/$src" -o "$obj" >"$obj.log" 2>&1 &
    pids+=("$!:$src:$obj")
  done
  failed=0
  for p in "${pids[@]}"; do
    IFS=: read -r pid src obj <<<"$p"
    if wait "$pid"; then say "compiled $src"; else say "FAILED to compile $src:"; cat "$obj.log" | tee -a "$report"; failed=1; fi
  done
  (( failed == 0 )) || exit 3
  # Every third-party header must have come from the bundle (not from a
  # system copy of another version).
  stray="$(cat "$work"/obj/*.d | tr ' \\' '\n\n' | grep -E '^/usr/(local/)?include/(absl|gtest|google|grpc|grpcpp|rocksdb)/' | sort -u | head -5 || true)"
  if [[ -n "$stray" ]]; then say "gpu-check: headers from outside the bundle: $stray"; exit 3; fi
  mapfile -t bundle_link < <(sed "s#^lib/#$work/lib/#" "$work/link.txt")
  # The CUDA runtime torch itself loads (the wheel's), else the toolkit's;
  # its directory goes into the rpath so that it resolves without ld.so.conf.
  cudart=""
  for d in ${NVIDIA_LIBS//:/ } "${CUDA_HOME:-/usr/local/cuda}/lib64"; do
    [[ -z "$cudart" ]] && cudart="$(ls "$d"/libcudart.so* 2>/dev/null | head -1 || true)"
  done
  [[ -n "$cudart" ]] || { say "gpu-check: no libcudart.so (set CUDA_HOME)"; exit 2; }
  say "CUDA runtime: $cudart"
  rpath="$compat_rpath$work/lib:$TORCH_DIR/lib:$(dirname "$cudart")${NVIDIA_LIBS:+:$NVIDIA_LIBS}"
  client_objs=("$work"/obj/client.o "$work"/obj/modules.o "$work"/obj/staging.o "$work"/obj/torch_tree.o)
  for exe in gpu_test gpu_bench; do
    if ! "$cxx" "$std" -O2 -pthread "$work/obj/$exe.o" "${client_objs[@]}" -o "$work/$exe" \
        -Wl,--start-group "${bundle_link[@]}" -Wl,--end-group \
        -Wl,--no-as-needed "$TORCH_DIR/lib/libtorch.so" "$TORCH_DIR/lib/libtorch_cpu.so" \
        "$TORCH_DIR/lib/libtorch_cuda.so" "$TORCH_DIR/lib/libc10_cuda.so" "$TORCH_DIR/lib/libc10.so" \
        -Wl,--as-needed "$cudart" -ldl -lm -lrt \
        "-Wl,-rpath-link,$work/lib:$TORCH_DIR/lib:$NVIDIA_LIBS" "-Wl,-rpath,$rpath" \
        >"$work/link-$exe.log" 2>&1; then
      say "FAILED to link $exe:"; tail -40 "$work/link-$exe.log" | tee -a "$report"; exit 3
    fi
  done
  say "linked gpu_test and gpu_bench ($(( $(date +%s) - t0 )) s so far)"

  section "libraries (ldd)"
  export LD_LIBRARY_PATH="$rpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  ldd "$work/gpu_test" | tee -a "$report" >/dev/null
  if ldd "$work/gpu_test" | grep -q "not found"; then
    say "gpu-check: missing libraries:"; ldd "$work/gpu_test" | grep "not found" | tee -a "$report"; exit 3
  fi
  say "every library resolves"

  section "gpu_test (CKPT_REQUIRE_GPU=1)"
  set +e
  CKPT_REQUIRE_GPU=1 timeout "${CKPT_GPU_TEST_TIMEOUT:-300}" "$work/gpu_test" \
    --gtest_output="xml:$out/gpu_test.xml" 2>&1 | grep -v ' level=info ' | tee -a "$report"
  rc=${PIPESTATUS[0]}
  set -e
  section "gpu_bench (issue 12, point 7)"
  set +e
  timeout "${CKPT_GPU_BENCH_TIMEOUT:-150}" "$work/gpu_bench" --scale "${CKPT_GPU_BENCH_SCALE:-1}" 2>&1 |
    grep -v ' level=info ' | tee -a "$report"
  say "gpu_bench exit status: ${PIPESTATUS[0]}"
  set -e
  section "summary"
  say "gpu_test exit status: $rc$([[ $rc == 124 ]] && echo ' (timed out)')"
  say "total: $(( $(date +%s) - t0 )) s"
  exit "$rc"
  ;;

*)
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 2
  ;;
esac
