#!/usr/bin/env bash
# Set up what the main job needs: a virtualenv with mtlskit. Python only.
# Idempotent and quiet when everything is already there.
#   scripts/setup.sh          .venv with mtlskit (the demo)
#   scripts/setup.sh --test   also the test tools: Debian packages, the Go peers,
#                             the test extras (what scripts/test.sh needs)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}

if [ "$mode" = --test ]; then
  need_apt=()
  command -v go >/dev/null || need_apt+=(golang-go)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
  command -v curl >/dev/null || need_apt+=(curl)
  command -v openssl >/dev/null || need_apt+=(openssl)
  # PostgreSQL's server programs (the tests start a throwaway cluster: scripts/postgres.sh).
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
    || need_apt+=(postgresql)
  # ACME: the clients the tests drive, and Let's Encrypt's test server as the reference.
  command -v certbot >/dev/null || need_apt+=(certbot)
  command -v lego >/dev/null || need_apt+=(lego)
  command -v pebble >/dev/null || need_apt+=(pebble)
  # mtlskit proxy's bench peers: stunnel, and nginx's stream module (L4 with ssl_verify_client).
  command -v stunnel4 >/dev/null || need_apt+=(stunnel4)
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} (apt)" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null; }
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
if [ "$mode" = --test ]; then
  extras='.[test,bench]'; stamp=.venv/.mtlskit-test-installed
else
  extras='.'; stamp=.venv/.mtlskit-installed
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing $extras into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e "$extras" 2>&1 | grep -v "is ignored" >&2 || true
  .venv/bin/python -c "import mtlskit, httptools, cryptography, click" && touch "$stamp"
fi

if [ "$mode" = --test ]; then
  # The Go peers (this repository's own copies): the seed's server and client,
  # and the load generator.
  mkdir -p bin
  export GOCACHE="$PWD/.gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local
  [ -x bin/seed-server ] || (cd interop/go-seed && go build -o ../../bin/seed-server ./server)
  [ -x bin/seed-client ] || (cd interop/go-seed && go build -o ../../bin/seed-client ./client)
  [ -x bin/mtls-loadgen ] || (cd bench/loadgen && go build -o ../../bin/mtls-loadgen .)
fi
