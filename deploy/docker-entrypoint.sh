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

# TLS from one directory of certificates named as `make certs` names them
# (docs/security.md): with KVRAFT_TLS_DIR set, member ID serves DIR/member-ID.crt/.key
# on its client port and DIR/peer-ID.crt/.key on its peer port (mutual TLS), both with
# DIR/ca.crt. KVRAFT_TLS_CLIENT_CERT_AUTH=1 also requires client certificates. A
# KVRAFT_*_FILE set explicitly wins.
if [ -n "${KVRAFT_TLS_DIR:-}" ] && [ "${1:-}" = serve ]; then
  if [ -z "${KVRAFT_ID:-}" ]; then
    echo "kvraft-entrypoint: KVRAFT_TLS_DIR needs KVRAFT_ID (or KVRAFT_ID_FROM_HOSTNAME=1)" >&2
    exit 64
  fi
  tls="$KVRAFT_TLS_DIR"
  : "${KVRAFT_CERT_FILE:=$tls/member-$KVRAFT_ID.crt}"
  : "${KVRAFT_KEY_FILE:=$tls/member-$KVRAFT_ID.key}"
  : "${KVRAFT_PEER_CERT_FILE:=$tls/peer-$KVRAFT_ID.crt}"
  : "${KVRAFT_PEER_KEY_FILE:=$tls/peer-$KVRAFT_ID.key}"
  : "${KVRAFT_PEER_TRUSTED_CA_FILE:=$tls/ca.crt}"
  export KVRAFT_CERT_FILE KVRAFT_KEY_FILE KVRAFT_PEER_CERT_FILE KVRAFT_PEER_KEY_FILE \
    KVRAFT_PEER_TRUSTED_CA_FILE
  if [ "${KVRAFT_TLS_CLIENT_CERT_AUTH:-0}" = 1 ]; then
    : "${KVRAFT_TRUSTED_CA_FILE:=$tls/ca.crt}"
    KVRAFT_CLIENT_CERT_AUTH=1
    export KVRAFT_TRUSTED_CA_FILE KVRAFT_CLIENT_CERT_AUTH
  fi
fi

# The data directory lives on the volume; make sure it exists (a fresh PVC is empty).
if [ "${1:-}" = serve ] && [ -n "${KVRAFT_DATA_DIR:-}" ]; then
  mkdir -p "$KVRAFT_DATA_DIR"
fi

exec kvraft "$@"
