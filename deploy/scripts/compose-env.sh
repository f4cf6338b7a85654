# Sourced by docker-up.sh and docker-down.sh: the repository root as the working
# directory, the compose command (the plugin when present, docker-compose v1 otherwise;
# `make` passes DOCKER_COMPOSE already), the project name, and `compose` bound to both.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if [ -z "${DOCKER_COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then DOCKER_COMPOSE="docker compose"
  else DOCKER_COMPOSE=docker-compose; fi
fi
project="${COMPOSE_PROJECT_NAME:-kvraft}"
# TLS=1: the TLS overlay (deploy/docker-compose.tls.yml) on top of the cluster.
compose_files=(-f deploy/docker-compose.yml)
if [ "${TLS:-0}" = 1 ]; then compose_files+=(-f deploy/docker-compose.tls.yml); fi
compose() { $DOCKER_COMPOSE -p "$project" "${compose_files[@]}" "$@"; }
