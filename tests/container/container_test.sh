#!/usr/bin/env bash
# The container test (CTest label `container`): the deploy/Dockerfile image
# and the docker-compose.yml users run, exercised from the host.
#
#   tests/container/container_test.sh CKPT_CLI
#
# 1. installs podman, podman-compose, runc, debootstrap (install-deps.sh
#    --container) and makes the debian:bookworm-slim base image from Debian's
#    archive when missing (scripts/podman-base-image.sh, cached);
# 2. builds the image (layer cache + ccache mount: a rebuild compiles only
#    what changed);
# 3. `podman-compose up -d` with a tokens file of its own and free host
#    ports, waits until the image's HEALTHCHECK passes;
# 4. from the host: saves and loads with the CLI (and a token), imports and
#    exports a .safetensors file, checks the
#    refusals (no token, wrong namespace), queries with grpcurl, scrapes the
#    metrics, checks the server runs as a non-root user;
# 5. restarts the container, then recreates it (down, up): the data is still
#    in the named volume; `down -v` at the end.
# Idempotent: leftovers of an earlier run (same compose project) are removed
# first. Each step is bounded by a timeout; times are printed.
set -euo pipefail

cli="${1:?usage: container_test.sh CKPT_CLI}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
project=ckpt-ctest
service=ckpt
image=ckpt-server:latest

t0=$SECONDS
name=container_test
work="$(mktemp -d /tmp/ckpt-container-test-XXXXXX)"
# shellcheck source=tests/container/lib.sh
source "$root/tests/container/lib.sh"

compose() {
  timeout 300 podman-compose -p "$project" -f "$root/docker-compose.yml" "$@"
}

container_name() { service_container "$service"; }

services=("$service")
trap cleanup EXIT

container_tools

step "removing leftovers of an earlier run"
compose down -v >/dev/null 2>&1 || true

build_image deploy/Dockerfile "$image"

# Credentials and ports of this run.
make_tokens
port="$(free_port)"
metrics_port="$(free_port)"
while [[ "$metrics_port" == "$port" ]]; do metrics_port="$(free_port)"; done
export CKPT_TOKENS_SOURCE="$work/tokens" CKPT_PORT="$port" CKPT_METRICS_PORT="$metrics_port"
address="127.0.0.1:$port"

ckpt() { timeout 60 "$cli" --server "$address" --timeout 20 "$@"; }

step "podman-compose up -d (gRPC on $port, metrics on $metrics_port)"
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "podman-compose up failed"; }
cname="$(container_name)"
wait_healthy "$cname"

step "the server runs as a non-root user and logs no token"
uid="$(podman exec "$cname" id -u)"
[[ "$uid" == 10001 ]] || fail "server runs as uid $uid"
# (Outputs are captured before grep: with pipefail, `grep -q` closing a pipe
# early would fail the writer with SIGPIPE.)
logs="$(podman logs "$cname" 2>&1)"
grep -q "listening on port 50051" <<<"$logs" || fail "no listening line in the log"
if grep -q "DEVELOPMENT MODE" <<<"$logs"; then fail "server runs without tokens"; fi

step "save and load through the container with the CLI"
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom >"$work/model.bin"
CKPT_TOKEN="$writer_token" ckpt put ctest/run-1/model "$work/model.bin" --tag best
CKPT_TOKEN="$writer_token" ckpt get ctest/run-1/model@best "$work/restored.bin"
cmp "$work/model.bin" "$work/restored.bin" || fail "restored bytes differ"

step "import and export a .safetensors file through the container"
python3 - "$work/weights.safetensors" <<'EOF'
import json, random, struct, sys
random.seed(7)
tensors = {"fc.weight": [64, 32], "fc.bias": [32]}
header, data = {}, b""
for name, shape in tensors.items():
    n = 4
    for d in shape:
        n *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + n]}
    data += bytes(random.getrandbits(8) for _ in range(n))
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + data)
EOF
CKPT_TOKEN="$writer_token" ckpt import "$work/weights.safetensors" ctest/run-1/weights --no-progress
CKPT_TOKEN="$writer_token" ckpt export ctest/run-1/weights "$work/exported.safetensors" --no-progress
python3 - "$work/weights.safetensors" "$work/exported.safetensors" <<'EOF' || fail "exported tensors differ"
import json, struct, sys
def read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    body = raw[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}
a, b = read(sys.argv[1]), read(sys.argv[2])
sys.exit(0 if a == b and len(a) == 2 else 1)
EOF

step "refusals: no token, another namespace, deleting without admin"
set +e
out="$(ckpt ls 2>&1)"; rc=$?
set -e
[[ $rc == 7 && "$out" == *"UNAUTHENTICATED: missing bearer token"* ]] || fail "no token: rc=$rc $out"
set +e
out="$(CKPT_TOKEN="$writer_token" ckpt put other/model "$work/model.bin" 2>&1)"; rc=$?
set -e
[[ $rc == 7 && "$out" == *"PERMISSION_DENIED: token 'writer' has no write right on 'other/model'"* ]] ||
  fail "wrong namespace: rc=$rc $out"
set +e
out="$(CKPT_TOKEN="$writer_token" ckpt rm ctest/run-1/model@1 --force 2>&1)"; rc=$?
set -e
[[ $rc == 7 && "$out" == *"no admin right"* ]] || fail "rm without admin: rc=$rc $out"

step "grpcurl through reflection, with and without the token"
out="$(grpcurl -plaintext "$address" list)"
grep -q ckpt.v1.CheckpointService <<<"$out" || fail "grpcurl list: $out"
out="$(grpcurl -plaintext "$address" grpc.health.v1.Health/Check)"
grep -q SERVING <<<"$out" || fail "grpcurl health: $out"
set +e
out="$(grpcurl -plaintext -d '{"prefix": "ctest/"}' "$address" ckpt.v1.CheckpointService/ListCheckpoints 2>&1)"
set -e
[[ "$out" == *"Unauthenticated"* ]] || fail "grpcurl without token: $out"
out="$(grpcurl -plaintext -H "authorization: Bearer $admin_token" -d '{"prefix": "ctest/"}' \
  "$address" ckpt.v1.CheckpointService/ListCheckpoints)"
grep -q '"name": "ctest/run-1/model"' <<<"$out" || fail "grpcurl ListCheckpoints with token: $out"

step "metrics on http://127.0.0.1:$metrics_port/metrics"
scrape() {
  python3 - "$metrics_port" <<'EOF'
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode())
EOF
}
metrics="$(scrape)"
grep -q '^ckpt_requests_total{code="OK",method="Save"} 2$' <<<"$metrics" || fail "Save count: $(grep Save <<<"$metrics")"
grep -q '^ckpt_requests_total{code="UNAUTHENTICATED",method="ListCheckpoints"} [1-9]' <<<"$metrics" ||
  fail "UNAUTHENTICATED count"
grep -q "^ckpt_received_bytes_total{method=\"Save\"} $((5 * 1024 * 1024 + 123 + 4 * (64 * 32 + 32)))\$" <<<"$metrics" ||
  fail "received bytes: $(grep received <<<"$metrics")"
grep -q '^ckpt_stored_bytes ' <<<"$metrics" || fail "no ckpt_stored_bytes"

check_data() {
  CKPT_TOKEN="$admin_token" ckpt get ctest/run-1/model@best "$work/again.bin"
  cmp "$work/model.bin" "$work/again.bin" || fail "data changed ($1)"
  local versions
  versions="$(CKPT_TOKEN="$admin_token" ckpt versions ctest/run-1/model --json)"
  [[ "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' <<<"$versions")" == 1 ]] ||
    fail "versions after $1: $versions"
}

step "restart the container"
compose restart >"$work/restart.log" 2>&1 || { cat "$work/restart.log" >&2; fail "restart failed"; }
wait_healthy "$(container_name)"
check_data restart

step "recreate the container (down, up): the data lives in the named volume"
compose down >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; fail "down failed"; }
podman volume exists "${project}_ckpt-data" || fail "volume ${project}_ckpt-data gone after down"
compose up -d >"$work/up2.log" 2>&1 || { cat "$work/up2.log" >&2; fail "second up failed"; }
wait_healthy "$(container_name)"
check_data recreate

step "the log names principals, never tokens"
logs="$(podman logs "$(container_name)" 2>&1)"
grep -q "principal=admin" <<<"$logs" || fail "no per-RPC log line of admin"
if grep -qe "$admin_token" -e "$writer_token" <<<"$logs"; then fail "a token is in the log"; fi

step "down -v"
compose down -v >/dev/null 2>&1
podman volume exists "${project}_ckpt-data" && fail "volume left after down -v"
step "PASS in $((SECONDS - t0)) s"
