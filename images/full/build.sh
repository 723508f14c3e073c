#!/usr/bin/env bash
# Build code-gateway/full:<version> on code-gateway/python:<version>; `make images` runs this
# after images/build.sh.
#
#   images/full/build.sh [--version V]
#
# The wheels of images/full/wheels.txt are downloaded with pip (the repository's venv's, else
# python3's); the Debian packages of images/full/packages.txt are installed during the build,
# with the host's network (no registry is needed: the base is the local python image). Labelled with a hash of its inputs
# (the python image's id, this directory, the wheels): nothing is rebuilt when they are unchanged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CACHE=${CODE_GATEWAY_CACHE:-/var/cache/code-gateway}
say() { echo "images/full: $*"; }
die() { echo "images/full: error: $*" >&2; exit 1; }

VERSION=""
case "${1:-}" in
    --version) VERSION=${2:?--version needs a value} ;;
    --version=*) VERSION=${1#--version=} ;;
    "") ;;
    *) die "usage: images/full/build.sh [--version V]" ;;
esac
if [ -z "$VERSION" ]; then
    VERSION=$(sed -n 's/^__version__[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' gateway/__init__.py | head -n1)
    VERSION=${VERSION:-0.1.0}
fi
BASE=code-gateway/python:$VERSION
IMAGE=code-gateway/full:$VERSION
docker image inspect "$BASE" >/dev/null 2>&1 || die "$BASE is missing: run images/build.sh first"

mkdir -p "$CACHE"
exec 9>"$CACHE/images-full.lock"
flock 9
CONTEXT=$(mktemp -d "$CACHE/context-full.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
mkdir -p "$CONTEXT/images/full" "$CONTEXT/wheels"
cp images/full/Dockerfile images/full/packages.txt "$CONTEXT/images/full/"
WHEELS="$CACHE/wheels-full"
mkdir -p "$WHEELS"
wanted=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' images/full/wheels.txt)
# The repository's venv has pip (make venv); a fresh host's python3 may not (Debian ships it apart).
if [ -x "$ROOT/.venv/bin/python" ]; then PIP_PYTHON=$ROOT/.venv/bin/python; else PIP_PYTHON=python3; fi
"$PIP_PYTHON" -m pip --version >/dev/null 2>&1 || die "no pip to download the wheels: run make venv (or install python3-pip)"
# shellcheck disable=SC2086
"$PIP_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" $wanted 2>&1 | grep -v '^WARNING: Location' || true
for spec in $wanted; do
    name=${spec%%==*}; version=${spec#*==}
    found=$(ls "$WHEELS"/"${name}"-"${version}"-*.whl 2>/dev/null | head -n1)
    [ -n "$found" ] || die "could not download $spec"
    cp "$found" "$CONTEXT/wheels/"
done

HASH=$( {
    docker image inspect -f '{{.Id}}' "$BASE"
    (cd "$CONTEXT" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    sha256sum <"${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "code-gateway.content-hash" }}' "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$HASH" ]; then
    say "$IMAGE is up to date (content hash $HASH)"
    echo "$IMAGE"
    exit 0
fi

start=$SECONDS
say "docker build $IMAGE from $BASE (content hash $HASH)"
set +e
DOCKER_BUILDKIT=0 docker build --network host --force-rm \
    --build-arg "BASE_IMAGE=$BASE" --build-arg "CONTENT_HASH=$HASH" \
    -f "$CONTEXT/images/full/Dockerfile" -t "$IMAGE" "$CONTEXT" 2>&1 |
    grep -v -e '^DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
        -e 'Install the buildx component' -e '^[[:space:]]*environment-variable\.$' -e 'https://docs.docker.com/go/buildx/' \
        -e '^[[:space:]]*$' -e '^Get:' -e '^Selecting previously' -e '^Preparing to unpack' -e '^Unpacking' -e '^Setting up'
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || die "docker build of $IMAGE failed (exit $status)"
docker image prune -f --filter "label=org.opencontainers.image.title=code-gateway-full" >/dev/null || true
say "built $IMAGE in $((SECONDS - start))s"
echo "$IMAGE"
