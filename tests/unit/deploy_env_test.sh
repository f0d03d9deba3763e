#!/usr/bin/env bash
# The deployment files (docker-compose*.yml, deploy/Dockerfile,
# deploy/k8s/*.yaml) set only environment variables that exist: each
# CKPT_* server setting is one `ckpt-server --help` names, each client one
# `ckpt --help` names; the rest are the compose files' own settings.
#
#   tests/unit/deploy_env_test.sh CKPT_SERVER_BINARY CKPT_CLI
set -euo pipefail
server="${1:?usage: deploy_env_test.sh CKPT_SERVER CKPT_CLI}"
cli="${2:?usage: deploy_env_test.sh CKPT_SERVER CKPT_CLI}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
known="$({ "$server" --help; "$cli" --help; } 2>&1 | grep -o 'CKPT_[A-Z0-9_]*' | sort -u)"
# The compose files' own settings (host side) and the image's build arguments.
own="CKPT_BIND CKPT_PORT CKPT_METRICS_PORT CKPT_PORT_A CKPT_PORT_B CKPT_TOKENS_SOURCE CKPT_JOBS
CKPT_BUILD_TESTS CKPT_BUILD_BENCH"
status=0
cd "$root"
for file in docker-compose*.yml deploy/Dockerfile deploy/k8s/*.yaml; do
  # Names followed by '=' or ':' or '}' or a space: settings, not prose like "CKPT_*".
  for var in $(grep -o 'CKPT_[A-Z0-9_]*[A-Z0-9]' "$file" | sort -u); do
    if ! grep -qx "$var" <<<"$known" && ! grep -qw "$var" <<<"$own"; then
      echo "$file: $var is not a setting of ckpt-server or ckpt" >&2
      status=1
    fi
  done
done
[[ $status == 0 ]] && echo "deploy_env_test: every CKPT_* variable exists"
exit $status
