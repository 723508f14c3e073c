#!/usr/bin/env bash
# Make sure a Docker engine is usable on this host; install and start one if not.
#
# Idempotent: when `docker info` already works (and, with --runsc, runsc is registered) this exits
# at once. Otherwise it installs Debian's docker.io (and debootstrap, which images/build.sh needs)
# when dockerd is missing, starts dockerd in the background when it is not running (no systemd as
# PID 1 on our machines, so it is started directly), and waits until the engine answers. Must run
# as root.
#
# Arguments:
#   --runsc   also make gVisor available to sandboxes (`code-gateway --runtime=gvisor`, or
#             `"isolation": "gvisor"` where --allow-isolation=gvisor): installs Debian's runsc and
#             registers it in daemon.json as the runtime "runsc" (--platform=ptrace --network=none
#             --host-uds=all). An engine not running yet starts with it. An engine that already
#             runs is never restarted (its containers would stop): it is sent SIGHUP, on which
#             dockerd reloads its "runtimes" live, and the script waits until `docker info` lists
#             runsc. Only asked for: without --runsc neither daemon.json nor the engine is touched.
#             (ENSURE_RUNSC=1 is the same as --runsc.)
#
# Environment:
#   DOCKERD_LOG            where dockerd logs (default /var/log/dockerd.log)
#   DOCKER_WAIT_SECONDS    how long to wait for the engine (default 60)
#   DOCKERD_ARGS           extra dockerd arguments (word-split), e.g. --data-root DIR
#   DOCKERD_PIDFILE        dockerd's pid file (default /var/run/docker.pid; pass
#                          the same path in DOCKERD_ARGS with --pidfile if you change it)
#   DOCKER_DAEMON_JSON     the engine's configuration file (default /etc/docker/daemon.json; pass
#                          the same path in DOCKERD_ARGS with --config-file if you change it)
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKER_WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}
DOCKERD_ARGS=${DOCKERD_ARGS:-}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
DOCKER_DAEMON_JSON=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
RUNSC_PATH=/usr/bin/runsc
RUNSC_ARGS='["--platform=ptrace", "--network=none", "--host-uds=all"]'

want_runsc=false
[ "${ENSURE_RUNSC:-}" = 1 ] && want_runsc=true
for arg in "$@"; do
    case "$arg" in
        --runsc) want_runsc=true ;;
        *) echo "usage: $0 [--runsc]" >&2; exit 2 ;;
    esac
done

say() { echo "ensure-docker: $*"; }
die() { echo "ensure-docker: error: $*" >&2; exit 1; }

engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

dockerd_pid() {
    # The pid of the live dockerd the pid file names (no procps needed); fails if there is none.
    local pid
    pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

dockerd_running() { dockerd_pid >/dev/null; }

dockerd_log_tail() {
    tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
}

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

runsc_live() {
    # True when the running engine has the runtime "runsc" exactly as we register it.
    docker info --format '{{json .Runtimes}}' 2>/dev/null | RUNSC_PATH=$RUNSC_PATH RUNSC_ARGS=$RUNSC_ARGS python3 -c '
import json, os, sys
runtime = json.load(sys.stdin).get("runsc") or {}
want = {"path": os.environ["RUNSC_PATH"], "runtimeArgs": json.loads(os.environ["RUNSC_ARGS"])}
sys.exit(0 if {"path": runtime.get("path"), "runtimeArgs": runtime.get("runtimeArgs") or []} == want else 1)'
}

register_runsc() {
    # Install runsc and write it into daemon.json (keeping everything else there); idempotent.
    command -v runsc >/dev/null 2>&1 || { say "installing runsc (gVisor)"; apt_install runsc; }
    [ -x "$RUNSC_PATH" ] || die "runsc is not at $RUNSC_PATH after installing it"
    mkdir -p "$(dirname "$DOCKER_DAEMON_JSON")"
    DAEMON_JSON=$DOCKER_DAEMON_JSON RUNSC_PATH=$RUNSC_PATH RUNSC_ARGS=$RUNSC_ARGS python3 - <<'EOF' || die "could not register runsc in $DOCKER_DAEMON_JSON"
import json, os, sys
path = os.environ["DAEMON_JSON"]
try:
    with open(path) as file:
        config = json.load(file)
except FileNotFoundError:
    config = {}
except ValueError as exc:
    sys.exit(f"ensure-docker: error: {path} is not valid JSON ({exc}); fix it first")
want = {"path": os.environ["RUNSC_PATH"], "runtimeArgs": json.loads(os.environ["RUNSC_ARGS"])}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == want:
    sys.exit(0)
runtimes["runsc"] = want
temporary = path + ".new"
with open(temporary, "w") as file:
    json.dump(config, file, indent=2)
    file.write("\n")
os.replace(temporary, path)
print(f"ensure-docker: registered runsc in {path}")
EOF
}

reload_runtimes() {
    # The engine runs: make it read its runtimes again without stopping anything (SIGHUP).
    local pid deadline
    pid=$(dockerd_pid) || die "the Docker engine runs, but no dockerd is named by $DOCKERD_PIDFILE: reload it " \
        "yourself (kill -HUP <dockerd pid>, or systemctl reload docker) so that it sees runsc"
    say "asking dockerd (pid $pid) to reload its runtimes (SIGHUP; its containers keep running)"
    kill -HUP "$pid"
    deadline=$((SECONDS + 20))
    until runsc_live; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "ensure-docker: error: dockerd did not take runsc from $DOCKER_DAEMON_JSON; last lines of ${DOCKERD_LOG}:" >&2
            dockerd_log_tail
            exit 1
        fi
        sleep 0.5
    done
}

if engine_up; then
    if ! $want_runsc; then
        say "docker engine is up"
        exit 0
    fi
    if runsc_live; then
        say "docker engine is up, with runsc"
        exit 0
    fi
    [ "$(id -u)" -eq 0 ] || die "registering runsc needs root"
    register_runsc
    reload_runtimes
    say "docker engine is up, with runsc"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "docker engine is not reachable and starting one needs root"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if $want_runsc && ! command -v runsc >/dev/null 2>&1; then
    missing+=(runsc)
fi
if [ ${#missing[@]} -gt 0 ]; then
    # docker.io recommends iptables etc.; install the ones the engine needs to start.
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    say "installing ${pkgs}"
    # shellcheck disable=SC2086
    apt_install $pkgs iptables
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"
# Registered before the engine starts: it reads its runtimes from daemon.json at start.
if $want_runsc; then
    register_runsc
fi

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
if $want_runsc && ! runsc_live; then
    # A dockerd that was already starting read daemon.json before runsc was written there.
    reload_runtimes
fi
say "docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown))"
