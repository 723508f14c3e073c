#!/usr/bin/env bash
# Build the sandbox image code-gateway/python:<version>; `make images` runs this.
#
#   images/build.sh [--version V]
#
# V defaults to __version__ in gateway/__init__.py. The image is built from
# images/python/Dockerfile on the local base image (images/base/build.sh, no
# registry needed) and labelled with a hash of everything that goes into it:
# the base image, the Dockerfile, the package list, kernels/ and this script.
# When the existing image carries the same hash nothing is rebuilt.
#
# Environment:
#   CODE_GATEWAY_CACHE   work directory (default /var/cache/code-gateway)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${CODE_GATEWAY_CACHE:-/var/cache/code-gateway}
export CODE_GATEWAY_CACHE=$CACHE

say() { echo "images: $*"; }
die() { echo "images: error: $*" >&2; exit 1; }

VERSION=""
while [ $# -gt 0 ]; do
    case "$1" in
        --version) [ $# -ge 2 ] || die "--version needs a value"; VERSION=$2; shift 2 ;;
        --version=*) VERSION=${1#--version=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (usage: images/build.sh [--version V])" ;;
    esac
done
if [ -z "$VERSION" ]; then
    VERSION=$(sed -n 's/^__version__[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' gateway/__init__.py 2>/dev/null | head -n1)
    VERSION=${VERSION:-0.1.0}
fi
IMAGE=code-gateway/python:$VERSION

[ -d kernels ] || die "kernels/ missing in $ROOT; the image bakes it in"
[ -f images/python/Dockerfile ] || die "images/python/Dockerfile missing"

start=$SECONDS
say "building $IMAGE"
bash deploy/host/ensure-docker.sh
# One build at a time on this host (parallel `make` targets, several checkouts).
mkdir -p "$CACHE"
exec 9>"$CACHE/images.lock"
flock 9
bash images/base/build.sh
BASE=$(bash images/base/build.sh --print-tag)

# Stage the build context: only what the Dockerfile uses, laid out as in the repo.
CONTEXT=$(mktemp -d "$CACHE/context.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
mkdir -p "$CONTEXT/images/python" "$CONTEXT/images/base"
cp images/python/Dockerfile "$CONTEXT/images/python/"
cp images/base/packages.txt "$CONTEXT/images/base/"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude=.ipynb_checkpoints -c kernels | tar -C "$CONTEXT" -x

content_hash() {
    # Paths, executable bits and contents of the context, plus the base and this script.
    {
        echo "base=$BASE"
        (cd "$CONTEXT" && find . -type f -print0 | LC_ALL=C sort -z |
            xargs -0 -r sh -c 'for f; do if [ -x "$f" ]; then m=x; else m=-; fi; printf "%s %s " "$m" "$f"; sha256sum <"$f"; done' _)
        (cd "$CONTEXT" && find . -type l -print0 | LC_ALL=C sort -z | xargs -0 -r -n1 sh -c 'printf "link %s -> %s\n" "$1" "$(readlink "$1")"' _)
        sha256sum <"${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
}
HASH=$(content_hash)

current=$(docker image inspect -f '{{ index .Config.Labels "code-gateway.content-hash" }}' "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$HASH" ]; then
    say "$IMAGE is up to date (content hash $HASH)"
    echo "$IMAGE"
    exit 0
fi

say "docker build $IMAGE from $BASE (content hash $HASH)"
# The legacy builder works with every docker client (Debian's has no buildx);
# no RUN step needs the network on the local base.
set +e
DOCKER_BUILDKIT=0 docker build \
    --network none \
    --force-rm \
    --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "CONTENT_HASH=$HASH" \
    -f "$CONTEXT/images/python/Dockerfile" \
    -t "$IMAGE" \
    "$CONTEXT" 2>&1 | grep -v -e '^DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
        -e 'Install the buildx component' -e '^[[:space:]]*environment-variable\.$' -e 'https://docs.docker.com/go/buildx/' -e '^[[:space:]]*$'
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || die "docker build of $IMAGE failed (exit $status)"

built=$(docker image inspect -f '{{ index .Config.Labels "code-gateway.content-hash" }}' "$IMAGE" 2>/dev/null || true)
[ "$built" = "$HASH" ] || die "docker build did not produce $IMAGE with content hash $HASH"
# Drop the untagged images earlier builds of this image left behind.
docker image prune -f --filter "label=org.opencontainers.image.title=code-gateway-python" >/dev/null || true
say "built $IMAGE in $((SECONDS - start))s"
echo "$IMAGE"
