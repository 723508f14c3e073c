#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server on loopback, for tests and local trials of --store-url.
#
#   ensure-postgres.sh install           the server binaries (Debian's postgresql-15), if missing
#   ensure-postgres.sh start DIR PORT    install, then initdb into DIR (once) and start a server there
#                                        on 127.0.0.1:PORT (a no-op if it already runs); prints its URL
#   ensure-postgres.sh stop DIR          stop the server of DIR (a no-op if none runs)
#
# Idempotent. The server runs as the user `postgres` (created if missing), trusts local
# connections (loopback only: never use this for anything but tests), keeps its socket in DIR,
# and creates no cluster of Debian's own. Must run as root.
#
# Environment:
#   PG_BIN                 the server binaries (default /usr/lib/postgresql/15/bin)
#   PG_WAIT_SECONDS        how long start waits for the server (default 60)
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_WAIT_SECONDS=${PG_WAIT_SECONDS:-60}

say() { echo "ensure-postgres: $*" >&2; }
die() { echo "ensure-postgres: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "this needs root (it installs packages and runs the server as postgres)"

as_postgres() {
    # runuser is in util-linux (always there); su needs a login shell the postgres user may lack.
    runuser -u postgres -- "$@"
}

apt_install() {
    # Install packages; refresh the package lists only when that is needed.
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
        say "running apt-get update"
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
    fi
}

install() {
    if [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ]; then
        ensure_user
        return 0
    fi
    say "installing postgresql-15"
    # postgresql-15 would create and start a cluster of its own on port 5432: not wanted here.
    apt_install postgresql-common
    sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    apt_install postgresql-15
    [ -x "$PG_BIN/postgres" ] || die "postgresql-15 is installed but $PG_BIN/postgres is missing"
    ensure_user
}

ensure_user() {
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
}

running() {
    [ -f "$1/data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1
}

start() {
    local dir=$1 port=$2
    install
    mkdir -p "$dir"
    chown postgres: "$dir"
    chmod 0700 "$dir"
    if ! [ -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    if ! running "$dir"; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t "$PG_WAIT_SECONDS" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start >&2 \
            || { tail -n 20 "$dir/server.log" >&2; die "the server did not start"; }
    fi
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1
    if running "$dir"; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    fi
}

case "${1:-}" in
    install) install ;;
    start) [ $# -eq 3 ] || die "usage: $0 start DIR PORT"; start "$2" "$3" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR PORT | stop DIR" ;;
esac
