#!/bin/sh
# kvraft container entrypoint: derive what the environment does not say, then exec
# kvraft so that the node itself is PID 1 and receives SIGTERM.
#
# In a Kubernetes StatefulSet every pod gets the same environment; the node id comes
# from the pod's ordinal instead: pod NAME-K (K = 0, 1, ...) is node K+1, because
# kvraft ids are positive. KVRAFT_ID_FROM_HOSTNAME=1 turns this on; an explicit
# KVRAFT_ID always wins.
set -eu

if [ -z "${KVRAFT_ID:-}" ] && [ "${KVRAFT_ID_FROM_HOSTNAME:-0}" = 1 ]; then
  host="${KVRAFT_HOSTNAME:-${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}}"
  ordinal="${host##*-}"
  case "$ordinal" in
    ''|*[!0-9]*)
      echo "kvraft-entrypoint: cannot derive the node id: hostname '$host' does not end in -ORDINAL" >&2
      exit 64 ;;
  esac
  KVRAFT_ID=$((ordinal + 1))
  export KVRAFT_ID
fi

# The data directory lives on the volume; make sure it exists (a fresh PVC is empty).
if [ "${1:-}" = serve ] && [ -n "${KVRAFT_DATA_DIR:-}" ]; then
  mkdir -p "$KVRAFT_DATA_DIR"
fi

exec kvraft "$@"
