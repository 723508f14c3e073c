#!/usr/bin/env bash
# Make sure a Docker engine is usable on this host; install and start one if not.
#
# Idempotent: when `docker info` already works this exits at once. Otherwise it
# installs Debian's docker.io (and debootstrap, which images/build.sh needs)
# when dockerd is missing, starts dockerd in the background when it is not
# running (no systemd as PID 1 on our machines, so it is started directly), and
# waits until the engine answers. Must run as root.
#
# Environment:
#   DOCKERD_LOG            where dockerd logs (default /var/log/dockerd.log)
#   DOCKER_WAIT_SECONDS    how long to wait for the engine (default 60)
#   DOCKERD_ARGS           extra dockerd arguments (word-split), e.g. --data-root DIR
#   DOCKERD_PIDFILE        dockerd's pid file (default /var/run/docker.pid; pass
#                          the same path in DOCKERD_ARGS with --pidfile if you change it)
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKER_WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}
DOCKERD_ARGS=${DOCKERD_ARGS:-}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}

say() { echo "ensure-docker: $*"; }
die() { echo "ensure-docker: error: $*" >&2; exit 1; }

engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

dockerd_running() {
    # True when the pid file names a live dockerd (no procps needed).
    local pid
    pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

dockerd_log_tail() {
    tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
}

if engine_up; then
    say "docker engine is up"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "docker engine is not reachable and starting one needs root"

apt_install() {
    # Install packages; refresh the package lists only when that is needed.
    export DEBIAN_FRONTEND=noninteractive
    local lists
    lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n1 || true)
    if [ -n "$lists" ] && apt-get install -y -q --no-install-recommends "$@"; then
        return 0
    fi
    say "running apt-get update"
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
}

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    # docker.io recommends iptables etc.; install the ones the engine needs to start.
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    say "installing ${pkgs}"
    # shellcheck disable=SC2086
    apt_install $pkgs iptables
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"

if dockerd_running; then
    say "dockerd is running (pid $(cat "$DOCKERD_PIDFILE")); waiting for it to answer"
else
    say "starting dockerd (log: ${DOCKERD_LOG})"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # A pid file left by a dockerd that died (its pid maybe reused) would stop a new one.
    rm -f "$DOCKERD_PIDFILE"
    # shellcheck disable=SC2086
    nohup dockerd $DOCKERD_ARGS >>"$DOCKERD_LOG" 2>&1 </dev/null &
    disown || true
fi

started=$SECONDS
deadline=$((started + DOCKER_WAIT_SECONDS))
until engine_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "ensure-docker: error: docker engine did not come up within ${DOCKER_WAIT_SECONDS}s; last lines of ${DOCKERD_LOG}:" >&2
        dockerd_log_tail
        exit 1
    fi
    # Give a fresh dockerd a moment to write its pid file before calling it dead.
    if [ $((SECONDS - started)) -ge 5 ] && ! dockerd_running; then
        echo "ensure-docker: error: dockerd is not running; last lines of ${DOCKERD_LOG}:" >&2
        dockerd_log_tail
        exit 1
    fi
    sleep 1
done
say "docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown))"
