#!/usr/bin/env bash
# Build the sandbox base image code-gateway/base:<hash> without a registry.
#
#   images/base/build.sh              build the image unless it already exists
#   images/base/build.sh --print-tag  print the image name and exit
#
# debootstraps a minimal Debian root, installs images/base/packages.txt with
# apt-get inside a chroot, and imports the tree with `docker import`. The tag is
# a hash over the inputs (this script, the package list, suite and architecture),
# so an existing tag means there is nothing to do. The root is built in a
# temporary directory under $CODE_GATEWAY_CACHE and removed afterwards; a run
# that died half way leaves nothing that a later run would trust.
#
# Environment:
#   CODE_GATEWAY_CACHE      work directory (default /var/cache/code-gateway)
#   DEBIAN_MIRROR           Debian archive (default: from the host's apt sources,
#                           else http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  security archive (default: from the host's apt sources,
#                           else http://deb.debian.org/debian-security)
set -euo pipefail

SUITE=bookworm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES_FILE="$HERE/packages.txt"
CACHE=${CODE_GATEWAY_CACHE:-/var/cache/code-gateway}
REPO=code-gateway/base

say() { echo "base: $*"; }
die() { echo "base: error: $*" >&2; exit 1; }

packages() { sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$PACKAGES_FILE"; }

arch() { dpkg --print-architecture 2>/dev/null || echo amd64; }

input_hash() {
    {
        echo "suite=$SUITE arch=$(arch)"
        packages
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
}

TAG="$REPO:$(input_hash)"

if [ "${1:-}" = --print-tag ]; then
    echo "$TAG"
    exit 0
elif [ $# -gt 0 ]; then
    die "usage: $0 [--print-tag]"
fi

if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "$TAG is up to date"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "building the base image needs root (debootstrap, chroot)"
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; } ||
        die "could not install debootstrap"
fi

apt_source_uri() {
    # First archive URI in the host's apt sources that serves suite $1, if any.
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v s="$suite" '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == s) { print $i; exit }
        }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v s="$suite" '
            function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") && uris != "") { split(uris, u, " "); print u[1]; found = 1 } types = suites = uris = "" }
            /^[[:space:]]*$/ { flush(); if (found) exit; next }
            /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
            /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
            END { if (!found) flush() }
        ' "$f"
    done | grep -E '^https?://' | head -n1 || true
}

MIRROR=${DEBIAN_MIRROR:-$(apt_source_uri "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(apt_source_uri "$SUITE-security")}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

mkdir -p "$CACHE"
exec 9>"$CACHE/base.lock"
flock 9
# Another run may have built it while we waited for the lock.
if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "$TAG is up to date"
    exit 0
fi

unmount_under() {
    # Unmount everything mounted below $1, deepest first.
    local dir
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

remove_root() {
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

# Leftovers of runs that died half way.
for old in "$CACHE"/rootfs.*; do
    [ -e "$old" ] && { say "removing stale $old"; remove_root "$old"; }
done

ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
trap 'remove_root "$ROOT"' EXIT
chmod 755 "$ROOT"

start=$SECONDS
say "building $TAG (debootstrap $SUITE from $MIRROR)"
debootstrap --variant=minbase --arch="$(arch)" "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
say "debootstrap done in $((SECONDS - start))s"

cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# Keep images small: no docs, man pages or translations from here on.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/code-gateway-nodoc" <<'NODOC'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
NODOC
cat >"$ROOT/etc/apt/apt.conf.d/code-gateway" <<'APTCONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APTCONF
# No daemons may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"

in_root() { chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

say "installing $(packages | tr '\n' ' ')"
{
    in_root apt-get update -q &&
        in_root apt-get dist-upgrade -y -q &&
        # shellcheck disable=SC2046
        in_root apt-get install -y -q $(packages)
} >"$CACHE/apt.log" 2>&1 || { tail -n 30 "$CACHE/apt.log" >&2; die "apt-get in the chroot failed (log: $CACHE/apt.log)"; }
say "packages installed in $((SECONDS - start))s"

in_root apt-get clean
umount "$ROOT/proc"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/usr/sbin/policy-rc.d \
    "$ROOT"/usr/share/doc/*/changelog* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/dev/*
find "$ROOT"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
: >"$ROOT/etc/resolv.conf"

say "importing into docker"
tar --numeric-owner --xattrs -C "$ROOT" -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        --change "LABEL org.opencontainers.image.title=code-gateway-base code-gateway.content-hash=${TAG#*:} code-gateway.debian-suite=$SUITE" \
        --message "debootstrap $SUITE + $(packages | tr '\n' ' ')" \
        - "$TAG" >/dev/null
say "built $TAG in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%d MB", $1 / 1e6}'))"
