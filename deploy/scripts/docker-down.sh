#!/usr/bin/env bash
# `make docker-down`: stop and remove the compose cluster's containers and network.
# VOLUMES=1 also removes its named volumes, i.e. all the data.
set -euo pipefail

source "$(dirname "$0")/compose-env.sh"
args=(down --remove-orphans)
if [ "${VOLUMES:-0}" = 1 ]; then args+=(--volumes); fi
# The image is only needed for interpolation; any tag will do for `down`.
KVRAFT_IMAGE="${KVRAFT_IMAGE:-kvraft:latest}" compose "${args[@]}"
if [ "${VOLUMES:-0}" = 1 ]; then
  echo "docker-down: project $project stopped, its volumes removed"
else
  echo "docker-down: project $project stopped; data kept (make docker-down VOLUMES=1 removes it)"
fi
