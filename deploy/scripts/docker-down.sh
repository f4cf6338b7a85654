#!/usr/bin/env bash
# `make docker-down`: stop and remove the compose cluster's containers and network.
# VOLUMES=1 also removes its named volumes, i.e. all the data.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
if [ -z "${DOCKER_COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then DOCKER_COMPOSE="docker compose"
  else DOCKER_COMPOSE=docker-compose; fi
fi
project="${COMPOSE_PROJECT_NAME:-kvraft}"
args=(down --remove-orphans)
if [ "${VOLUMES:-0}" = 1 ]; then args+=(--volumes); fi
# The image is only needed for interpolation; any tag will do for `down`.
KVRAFT_IMAGE="${KVRAFT_IMAGE:-kvraft:latest}" \
  $DOCKER_COMPOSE -p "$project" -f deploy/docker-compose.yml "${args[@]}"
if [ "${VOLUMES:-0}" = 1 ]; then
  echo "docker-down: project $project stopped, its volumes removed"
else
  echo "docker-down: project $project stopped; data kept (make docker-down VOLUMES=1 removes it)"
fi
