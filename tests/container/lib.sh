# Shared by the container tests (sourced): step/fail, a podman configuration
# for machines without systemd, free ports, the images, health waits and a
# tokens file. Needs: root (the repository), project (the compose project),
# work (a temporary directory), t0 and name (for messages).

step() { printf '[%s +%4ds] %s\n' "$name" $((SECONDS - t0)) "$*"; }
fail() { printf '[%s] FAIL: %s\n' "$name" "$*" >&2; exit 1; }

# No systemd here: cgroupfs, runc, file events; no default ulimits (the
# sandbox refuses them). Harmless on a normal host.
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
export CONTAINERS_CONF="$work/containers.conf"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# podman, podman-compose and the base image (debootstrap on first use).
container_tools() {
  step "installing podman, podman-compose, runc, debootstrap (if missing)"
  timeout 600 "$root/scripts/install-deps.sh" --container
  command -v grpcurl >/dev/null || fail "grpcurl missing (scripts/install-deps.sh installs it)"
  step "base image (debootstrap on first use, then cached)"
  timeout 600 "$root/scripts/podman-base-image.sh"
}

# build_image DOCKERFILE TAG: layer cache + ccache mount (a rebuild of
# unchanged sources is a cache hit).
build_image() {
  local start=$SECONDS
  step "building $2 from $1"
  timeout 1200 podman build --network=host -f "$root/$1" -t "$2" "$root" \
    >"$work/build-$2.log" 2>&1 || { tail -40 "$work/build-$2.log" >&2; fail "image build of $2 failed"; }
  step "$2 built in $((SECONDS - start)) s"
}

# The containers of service $1 of the compose project.
service_container() {
  podman ps -a --filter "label=io.podman.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n1
}

# The EXIT trap of a test (trap cleanup EXIT): on failure the last log lines
# of the containers of the services in $services (an array), then `compose
# down -v` (the test's own compose function) and $work removed.
cleanup() {
  local rc=$? service cname
  if ((rc != 0)); then
    for service in "${services[@]}"; do
      cname="$(service_container "$service" 2>/dev/null || true)"
      if [[ -n "$cname" ]]; then
        echo "---- log of $cname ----" >&2
        podman logs --tail 50 "$cname" >&2 || true
      fi
    done
  fi
  compose down -v >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$rc"
}

# wait_healthy CONTAINER: podman runs HEALTHCHECKs from systemd timers;
# without systemd, run the image's check by hand until it passes.
wait_healthy() {
  local cname=$1 deadline=$((SECONDS + 120)) health
  [[ -n "$cname" ]] || fail "no container of project $project"
  until podman healthcheck run "$cname" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "container $cname not healthy within 120 s"
    sleep 1
  done
  health="$(podman inspect --format '{{.State.Health.Status}}' "$cname")"
  [[ "$health" == healthy ]] || fail "health status '$health' of $cname"
  step "container $cname healthy"
}

# Tokens of this run: admin_token (admin on *), writer_token (write on
# ctest), in $work/tokens.
make_tokens() {
  admin_token="ctest-admin-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  writer_token="ctest-writer-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  local writer_sha
  writer_sha="$(printf %s "$writer_token" | sha256sum | cut -d' ' -f1)"
  cat >"$work/tokens" <<TOKENS
admin   $admin_token  admin  *
writer  sha256:$writer_sha  write  ctest
TOKENS
  chmod 644 "$work/tokens"
}
