#!/usr/bin/env bash
# Build the kvraft image with no container registry at hand, once per source state.
#
#   1. the base image: deploy/scripts/build-base-image.sh (debootstrap + docker import),
#      skipped when its tag exists;
#   2. wheels of the project and of every dependency, built on the host with pip into
#      deploy/.build/project and deploy/.build/wheels (the host reaches PyPI; the build
#      inside Docker does not);
#   3. `docker build` with INSTALL_FROM=wheels.
# The image is tagged with a hash of everything that goes into it (sources, Dockerfile,
# base image id), so a second run finds kvraft:<hash> and builds nothing.
#
# usage: build-image.sh            prints the image tag (kvraft:<hash>) as its last line
# env:   KVRAFT_BASE_IMAGE (default kvraft-base:bookworm), KVRAFT_IMAGE_REPO (default
#        kvraft), PYTHON (default python3; must match the base image's Python minor)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
base="${KVRAFT_BASE_IMAGE:-kvraft-base:bookworm}"
repo="${KVRAFT_IMAGE_REPO:-kvraft}"
python="${PYTHON:-python3}"
build_dir="deploy/.build"
wheels_dir="$build_dir/wheels"
project_dir="$build_dir/project"
log() { echo "build-image: $*" >&2; }

# One build at a time per checkout (a test run and `make docker-up` may overlap); the
# second one then finds the first one's image.
mkdir -p "$build_dir"
exec 9>"$build_dir/.lock"
flock 9

# Everything the image is made of, in a stable order, without build output.
source_files() {
  {
    find kvraft -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
      ! -name '*_pb2.py' ! -name '*_pb2_grpc.py' ! -name '*_pb2.pyi'
    find protos -type f ! -path '*/__pycache__/*'
    echo pyproject.toml; echo setup.py; echo MANIFEST.in; echo README.md
  } | LC_ALL=C sort
}
image_files() {
  printf '%s\n' .dockerignore deploy/Dockerfile deploy/docker-entrypoint.sh deploy/healthcheck.py
}

bash deploy/scripts/build-base-image.sh "$base" >&2
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

hash="$({ source_files; image_files; } | tr '\n' '\0' | xargs -0 sha256sum --
        echo "base $base_id")"
hash="$(printf '%s\n' "$hash" | sha256sum | cut -c1-16)"
tag="$repo:$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
  log "image $tag already built"
  docker tag "$tag" "$repo:latest"
  echo "$tag"
  exit 0
fi

# The wheels must fit the image's interpreter (cp3XX tags).
want="$(docker run --rm --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$want" != "$have" ]; then
  log "the base image runs Python $want but $python is $have: set PYTHON=python$want"
  exit 1
fi

stamp="$build_dir/wheels.source-hash"
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ] || ! ls "$project_dir"/kvraft-*.whl >/dev/null 2>&1; then
  # Build from a copy of the sources: building in the tree would write build/ and the
  # generated protos into a working tree others may be using.
  src="$build_dir/src"
  rm -rf "$src" "$project_dir" "$stamp"; mkdir -p "$src" "$wheels_dir" "$project_dir"
  source_files | tar -cf - -T - | tar -xf - -C "$src"
  rm -f "$wheels_dir"/kvraft-*.whl
  log "building wheels with $python into $wheels_dir (dependencies) and $project_dir (kvraft)"
  "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels_dir" "./$src" >&2
  # The Dockerfile installs the dependencies in a layer of their own, cached while only
  # kvraft changes: keep kvraft's wheel apart from theirs.
  mv "$wheels_dir"/kvraft-*.whl "$project_dir/"
  rm -rf "$src"
  echo "$hash" > "$stamp"
fi

build_log="$build_dir/docker-build.log"
log "docker build $tag from $base (output in $build_log)"
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build \
  --file deploy/Dockerfile \
  --build-arg BASE_IMAGE="$base" \
  --build-arg INSTALL_FROM=wheels \
  --force-rm \
  --label org.kvraft.source-hash="$hash" \
  --tag "$tag" --tag "$repo:latest" \
  . > "$build_log" 2>&1 || { tail -n 40 "$build_log" >&2; log "docker build failed"; exit 1; }
# The legacy builder keeps each build stage as an untagged image whose layers are the
# cache of the next build: keep the newest, drop the older ones.
docker image ls --quiet --filter dangling=true --filter label=org.kvraft.stage=build |
  tail -n +2 | xargs -r docker image rm >/dev/null 2>&1 || true
# Older builds are superseded; keep those a container still uses (rm refuses them).
docker image ls --filter label=org.kvraft.source-hash --format '{{.Repository}}:{{.Tag}}' "$repo" |
  while read -r old; do
    [ "$old" = "$tag" ] || [ "$old" = "$repo:latest" ] || docker image rm "$old" >/dev/null 2>&1 || true
  done
echo "$tag"
