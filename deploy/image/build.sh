#!/usr/bin/env bash
# Build the images deploy/compose runs, without a registry.
#
#   deploy/image/build.sh gateway [--print-tag]    code-gateway/gateway:<version>-<hash>, the gateway
#   deploy/image/build.sh postgres [--print-tag]   code-gateway/postgres:15-<hash>, a local stand-in
#                                                  for the official postgres:15 image (tests)
#
# Idempotent: the tag ends in a hash over the inputs (the sources, these files, the base), so an
# existing tag means there is nothing to do; it is also tagged :<version> (gateway) or :15.
# The context is prepared in a temporary directory: a wheelhouse of the package and its
# dependencies (pip wheel, from PyPI or pip's cache) and Debian packages (apt-get download) that
# are extracted in the image; the build itself runs with --network none, FROM the local sandbox
# base (images/base/build.sh) unless BASE_IMAGE names another (e.g. debian:bookworm-slim).
#
# Environment:
#   BASE_IMAGE   the base (default: images/base/build.sh's image, built if missing)
#   PYTHON       the Python whose pip builds the wheelhouse (default: .venv/bin/python, else python3)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
say() { echo "image: $*" >&2; }
die() { echo "image: error: $*" >&2; exit 1; }

what=${1:-}
case "$what" in
    gateway) debs=(iptables libip4tc2 libip6tc2 libxtables12 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libnftnl11) ;;
    postgres) debs=(postgresql-15 postgresql-client-15 libpq5) ;;
    *) die "usage: $0 gateway|postgres [--print-tag]" ;;
esac

base=${BASE_IMAGE:-$("$ROOT/images/base/build.sh" --print-tag)}
version=$(cd "$ROOT" && sed -n 's/^__version__ = "\(.*\)"/\1/p' gateway/__init__.py)
inputs() {
    echo "base=$base debs=${debs[*]}"
    cat "${BASH_SOURCE[0]}" "$HERE/$what.Dockerfile"
    if [ "$what" = gateway ]; then
        (cd "$ROOT" && find pyproject.toml gateway kernels -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
            -print0 | sort -z | xargs -0 sha256sum)
    else
        cat "$HERE/postgres-entrypoint.sh"
    fi
}
hash=$(inputs | sha256sum | cut -c1-12)
if [ "$what" = gateway ]; then repo=code-gateway/gateway; short=$version; else repo=code-gateway/postgres; short=15; fi
tag="$repo:$short-$hash"
if [ "${2:-}" = --print-tag ]; then echo "$tag"; exit 0; fi
if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "$repo:$short"
    echo "$tag"; exit 0
fi
if [ -z "${BASE_IMAGE:-}" ] && ! docker image inspect "$base" >/dev/null 2>&1; then
    "$ROOT/images/base/build.sh" >&2
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/debs"
say "downloading ${debs[*]}"
if ! (cd "$context/debs" && apt-get download -q "${debs[@]}" >&2); then
    apt-get update -q >&2 || die "apt-get update failed"
    (cd "$context/debs" && apt-get download -q "${debs[@]}" >&2) || die "apt-get download ${debs[*]} failed"
fi
cp "$HERE/$what.Dockerfile" "$context/Dockerfile"
if [ "$what" = gateway ]; then
    python=${PYTHON:-$ROOT/.venv/bin/python}
    [ -x "$python" ] || python=python3
    # Wheels for the image's Python (its version, glibc 2.36), whatever Python runs pip here.
    image_python=$(docker run --rm --network none --entrypoint python3 "$base" -c \
        'import platform; print(platform.python_version())')
    say "building the wheelhouse for Python $image_python"
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$context/wheels" "$ROOT" >&2 || die "pip wheel failed"
    platforms=()
    for glibc in 2_17 2_28 2_34 2_35 2_36; do platforms+=(--platform "manylinux_${glibc}_$(uname -m)"); done
    "$python" -m pip download --quiet --dest "$context/wheels" --only-binary=:all: --python-version "$image_python" \
        --implementation cp "${platforms[@]}" --platform linux_$(uname -m) pip \
        "$(ls "$context"/wheels/code_interpreter_gateway-*.whl)[postgresql,kubernetes]" >&2 || die "pip download failed"
    cp -r "$ROOT/kernels" "$context/kernels"
    find "$context/kernels" -name __pycache__ -prune -exec rm -rf {} +
else
    cp "$HERE/postgres-entrypoint.sh" "$context/"
fi
say "building $tag"
docker build --quiet --network none --build-arg "BASE_IMAGE=$base" --label "code-gateway.inputs=$hash" \
    -t "$tag" -t "$repo:$short" "$context" >&2 || die "docker build failed"
# Each change of the sources is a new tag: keep the newest three (other checkouts may use theirs).
docker images --format '{{.Repository}}:{{.Tag}}' "$repo" | grep -- "^$repo:$short-" | tail -n +4 \
    | xargs -r docker rmi >/dev/null 2>&1 || true
echo "$tag"
