#!/usr/bin/env bash
# `make docker-up`: build what is missing (base image, wheels, image; see build-image.sh),
# start the 5-node cluster of deploy/docker-compose.yml, wait for a leader (bounded) and
# print how to reach it.
#
# env: DOCKER_COMPOSE (default: "docker compose" when the plugin exists, else
#      docker-compose), COMPOSE_PROJECT_NAME (default kvraft), LEADER_TIMEOUT_S (60),
#      KVRAFT_HOST_PORT_N / KVRAFT_HOST_IP (see the compose file)
set -euo pipefail

source "$(dirname "$0")/compose-env.sh"
leader_timeout_s="${LEADER_TIMEOUT_S:-60}"

docker info >/dev/null 2>&1 || { echo "docker-up: the Docker engine is not reachable" >&2; exit 1; }

# TLS=1 (docs/security.md): the certificates of `make certs` in CERTS_DIR, copied for
# the containers' user (uid 10001) to read: development keys only, made readable to all
# in deploy/.build/certs; the CA's key stays behind.
certs_dir="${CERTS_DIR:-.certs}"
if [ "${TLS:-0}" = 1 ]; then
  for n in 1 2 3 4 5; do
    for f in ca.crt "member-$n.crt" "member-$n.key" "peer-$n.crt" "peer-$n.key"; do
      [ -f "$certs_dir/$f" ] || { echo "docker-up: $certs_dir/$f is missing: run make certs" >&2; exit 1; }
    done
  done
  rm -rf deploy/.build/certs
  mkdir -p deploy/.build/certs
  for f in "$certs_dir"/*.crt "$certs_dir"/*.key; do
    [ "$(basename "$f")" = ca.key ] && continue
    install -m 0644 "$f" deploy/.build/certs/
  done
fi

KVRAFT_IMAGE="$(bash deploy/scripts/build-image.sh | tail -n1)"
export KVRAFT_IMAGE
echo "docker-up: starting project $project with $KVRAFT_IMAGE"
compose up --detach --no-build

# Wait until some node knows a leader (Cluster.Status, asked inside the container so the
# host needs no Python packages).
deadline=$((SECONDS + leader_timeout_s))
view=""
until view="$(compose exec -T kvraft1 kvraft-healthcheck --leader 2>/dev/null)"; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "docker-up: no leader after ${leader_timeout_s}s; last lines of each node's log:" >&2
    compose logs --tail=15 >&2 || true
    exit 1
  fi
  sleep 1
done
leader="$(sed -n 's/.*leader=\([0-9]*\).*/\1/p' <<<"$view")"

ip="${KVRAFT_HOST_IP:-127.0.0.1}"
down="make docker-down"
[ "$project" = kvraft ] || down="COMPOSE_PROJECT_NAME=$project make docker-down"
endpoints=""
for n in 1 2 3 4 5; do
  var="KVRAFT_HOST_PORT_$n"
  endpoints="${endpoints:+$endpoints,}$ip:${!var:-2379$n}"
done
tls_flags=""
if [ "${TLS:-0}" = 1 ]; then
  tls_flags=" --cacert $certs_dir/ca.crt"
  if [ "${KVRAFT_TLS_CLIENT_CERT_AUTH:-0}" = 1 ]; then
    tls_flags="$tls_flags --cert $certs_dir/client.crt --key $certs_dir/client.key"
  fi
fi
cat <<MSG
docker-up: the 5-node cluster is up; node $leader is the leader ($view).
  client endpoints:  $endpoints   (node N on port 2379N)${tls_flags:+, TLS: pass$tls_flags}
  from the host:     KVRAFT_ENDPOINTS=$endpoints kvraft put greeting hello$tls_flags
                     KVRAFT_ENDPOINTS=$endpoints kvraft status$tls_flags
  inside the network: $DOCKER_COMPOSE -p $project ${compose_files[*]} exec kvraft1 kvraft get greeting${tls_flags:+ --cacert /certs/ca.crt}
  logs:              $DOCKER_COMPOSE -p $project ${compose_files[*]} logs -f
  stop:              $down   (VOLUMES=1 also removes the data)
MSG
