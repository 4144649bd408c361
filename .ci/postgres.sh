#!/usr/bin/env bash
# A throwaway PostgreSQL server for the distributed tests, for CI and for developers.
#
#   .ci/postgres.sh start   install PostgreSQL if missing (apt-get, as root), start a server on
#                           127.0.0.1:$OPTIMLAB_PG_PORT (55432) with its data under
#                           $OPTIMLAB_PG_DIR (/tmp/optimlab-postgres), create a user with a
#                           password and a database, and print the database URL on stdout
#   .ci/postgres.sh url     print the URL of that server
#   .ci/postgres.sh stop    stop the server (its data stays; `clean` stops and removes it)
#
# Idempotent: `start` reuses the server and database when they exist or already run. As root
# the server runs as the `postgres` system user the package creates, otherwise as the caller.
#
#   export OPTIMLAB_TEST_POSTGRES_URL="$(.ci/postgres.sh start)"; make test
set -euo pipefail

PORT="${OPTIMLAB_PG_PORT:-55432}"
BASE="${OPTIMLAB_PG_DIR:-${TMPDIR:-/tmp}/optimlab-postgres}"
DATA="$BASE/data"
DATABASE=optimlab_test
ROLE=optimlab

log() { echo "postgres.sh: $*" >&2; }
fail() { log "$*"; exit 1; }

find_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$dir" ] && command -v pg_ctl >/dev/null 2>&1; then
        dir="$(dirname "$(command -v pg_ctl)")"
    fi
    echo "$dir"
}

install() {
    [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed; run as root or install it (apt-get install postgresql)"
    command -v apt-get >/dev/null || fail "PostgreSQL is not installed and there is no apt-get"
    log "installing PostgreSQL with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || fail "apt-get update failed (no network?)"
    apt-get install -y -qq postgresql >/dev/null || fail "apt-get install postgresql failed"
}

# The server must not run as root: as root, use the postgres system user.
as_server() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

running() { as_server "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

sql() {  # SQL on stdin, as the superuser over the server's own socket; prints bare rows
    as_server "$BIN/psql" -h "$BASE" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA
}

password() {
    if [ ! -s "$BASE/password" ]; then
        (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$BASE/password")
    fi
    cat "$BASE/password"
}

url() { echo "postgresql://$ROLE:$(password)@127.0.0.1:$PORT/$DATABASE"; }

start() {
    BIN="$(find_bin)"
    [ -n "$BIN" ] || { install; BIN="$(find_bin)"; }
    [ -x "$BIN/pg_ctl" ] || fail "no pg_ctl found after installing PostgreSQL"
    mkdir -p "$BASE"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$BASE"
    chmod 700 "$BASE"
    if [ ! -s "$DATA/PG_VERSION" ]; then
        log "creating a database cluster in $DATA"
        as_server "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    if ! running; then
        log "starting the server on 127.0.0.1:$PORT"
        as_server "$BIN/pg_ctl" -D "$DATA" -l "$BASE/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$BASE -c max_connections=200" \
            start >/dev/null || { tail -n 20 "$BASE/server.log" >&2 || true; fail "the server did not start"; }
    fi
    local pw
    pw="$(password)"
    if [ "$(echo "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'" | sql)" != 1 ]; then
        echo "CREATE ROLE $ROLE LOGIN" | sql
    fi
    echo "ALTER ROLE $ROLE PASSWORD '$pw'" | sql
    if [ "$(echo "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | sql)" != 1 ]; then
        echo "CREATE DATABASE $DATABASE OWNER $ROLE" | sql
    fi
    url
}

stop() {
    BIN="$(find_bin)"
    if [ -n "$BIN" ] && [ -s "$DATA/PG_VERSION" ] && running; then
        as_server "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        log "stopped the server on port $PORT"
    fi
}

case "${1:-}" in
    start) start ;;
    url) [ -s "$BASE/password" ] || fail "no server set up in $BASE; run: $0 start"; url ;;
    stop) stop ;;
    clean) stop; rm -rf "$BASE" ;;
    *) echo "usage: $0 start|url|stop|clean" >&2; exit 2 ;;
esac
