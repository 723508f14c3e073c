#!/usr/bin/env bash
# docker-compose (Debian's, 1.29), for deploy/compose and its test. Idempotent; needs root.
#
#   ensure-compose.sh      install docker-compose unless it is there
set -euo pipefail

say() { echo "ensure-compose: $*" >&2; }
die() { echo "ensure-compose: error: $*" >&2; exit 1; }

if command -v docker-compose >/dev/null 2>&1; then
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "this needs root (it installs docker-compose with apt-get)"
export DEBIAN_FRONTEND=noninteractive
say "installing docker-compose"
if ! apt-get install -y -q --no-install-recommends docker-compose >&2; then
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends docker-compose >&2 || die "apt-get install docker-compose failed"
fi
docker-compose version >&2
