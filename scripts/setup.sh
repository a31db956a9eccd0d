#!/usr/bin/env bash
# Set up a fresh machine for mtlskit: Debian tools, a virtualenv, the Go peers.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v go >/dev/null || need_apt+=(golang-go)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.mtlskit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing mtlskit and test tools into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]' 2>&1 | grep -v "is ignored" >&2 || true
  .venv/bin/python -c "import mtlskit, httptools, cryptography, click" && touch "$stamp"
fi

# The Go peers: the seed's server and client, and the load generator.
mkdir -p bin
export GOCACHE="$PWD/.gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local
SHARED=$(cd ../shared && pwd)
[ -x bin/seed-server ] || (cd "$SHARED/peers/go-seed" && go build -o "$OLDPWD/bin/seed-server" ./server)
[ -x bin/seed-client ] || (cd "$SHARED/peers/go-seed" && go build -o "$OLDPWD/bin/seed-client" ./client)
[ -x bin/mtls-loadgen ] || (cd "$SHARED/bench/loadgen" && go build -o "$OLDPWD/bin/mtls-loadgen" .)
