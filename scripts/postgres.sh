#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and CI, in a folder of its own.
#   scripts/postgres.sh start DIR [PORT]   initdb (first time), start, wait; prints the URL
#   scripts/postgres.sh stop DIR           stop it (the data stays: start again reuses it,
#                                          on the same port)
# Listens on 127.0.0.1 only, with its socket in DIR; trust authentication, so only
# for tests. PostgreSQL refuses to run as root: run by root, the cluster belongs
# to the postgres user (DIR must then be reachable by it, e.g. under /tmp).
set -euo pipefail

usage() { echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")

bindir=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && bindir=$d  # the newest version wins (glob order)
done
if [ -z "$bindir" ]; then
  if command -v initdb >/dev/null; then
    bindir=$(dirname "$(command -v initdb)")
  else
    echo "postgres.sh: initdb not found: run scripts/setup.sh --test (Debian package postgresql)" >&2
    exit 1
  fi
fi

if [ "$(id -u)" = 0 ]; then
  owner=postgres
  as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
  owner=$(id -un)
  as_owner() { (cd / && "$@"); }
fi

case "$cmd" in
  start)
    mkdir -p "$dir"
    chown "$owner" "$dir"
    chmod 700 "$dir"
    if ! as_owner test -w "$dir"; then
      echo "postgres.sh: $owner cannot write to $dir (a parent folder is closed to it): use a folder under /tmp" >&2
      exit 1
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      # --no-sync: a throwaway cluster does not need initdb's fsyncs.
      as_owner "$bindir/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
        --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port=${3:-}
    [ -n "$port" ] || { [ -f "$dir/port" ] && port=$(cat "$dir/port"); } || true
    if [ -z "$port" ]; then
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    echo "$port" >"$dir/port"
    if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      echo "postgresql://postgres@127.0.0.1:$port/postgres"  # already running
      exit 0
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses=127.0.0.1" start >/dev/null; then
      tail -n 20 "$dir/server.log" >&2 || true
      exit 1
    fi
    for _ in $(seq 1 300); do
      "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && break
      sleep 0.1
    done
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
      || { echo "postgres.sh: not ready on 127.0.0.1:$port" >&2; exit 1; }
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
  *) usage ;;
esac
