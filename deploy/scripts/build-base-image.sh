#!/usr/bin/env bash
# Produce the kvraft image's base without a container registry: a minimal Debian
# bookworm root file system made with debootstrap from Debian's own packages, then
# `docker import`ed under a local tag. Skips everything when the tag already exists.
#
# usage: build-base-image.sh [TAG]        (default: $KVRAFT_BASE_IMAGE or kvraft-base:bookworm)
# env:   DEBIAN_MIRROR  override the mirror (default: the one /etc/apt/sources.list* names)
set -euo pipefail

tag="${1:-${KVRAFT_BASE_IMAGE:-kvraft-base:bookworm}}"
here="$(cd "$(dirname "$0")" && pwd)"
build_dir="$(cd "$here/.." && pwd)/.build"
suite=bookworm
# python3 runs the node; python3-venv lets the build stage make /opt/kvraft with pip in it.
packages=python3,python3-venv,ca-certificates

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  # A fresh machine of this kind has apt and Debian's packages but not debootstrap.
  command -v apt-get >/dev/null || { echo "debootstrap is missing and there is no apt-get" >&2; exit 1; }
  echo "installing debootstrap from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends debootstrap >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends debootstrap >/dev/null; }
fi

# The Debian mirror this machine already reaches: the first main-archive URI in its apt
# sources (one-line .list or deb822 .sources), never the security archive.
find_mirror() {
  local f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri="$(grep -hoE '(^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|^URIs:[[:space:]]*)https?://[^[:space:]]+/debian/?([[:space:]]|$)' "$f" \
      | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)"
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  echo "http://deb.debian.org/debian"
}
mirror="${DEBIAN_MIRROR:-$(find_mirror)}"

mkdir -p "$build_dir"
rootfs="$(mktemp -d "$build_dir/rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite from $mirror into $rootfs (a few minutes)"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
  > "$build_dir/debootstrap.log" 2>&1 || {
  tail -n 30 "$build_dir/debootstrap.log" >&2; exit 1; }

# Keep it small: no package caches, lists, docs, man pages or translations.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debian $suite minbase + $packages (debootstrap from $mirror)" \
  - "$tag" >/dev/null
echo "base image $tag imported ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
