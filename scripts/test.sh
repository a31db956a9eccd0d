#!/usr/bin/env bash
# Set up and run every test: ruff, mypy --strict, the import contracts (lint-imports),
# pytest (Python 3.11, then 3.13), and the TLS-engine, server and verify tests once more
# on the oldest dependencies we admit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check
.venv/bin/ruff format --check -q
.venv/bin/mypy
.venv/bin/lint-imports --no-logo  # the import contracts in pyproject.toml
.venv/bin/pytest "$@"

# Python 3.13 adds VERIFY_X509_STRICT to ssl defaults: keep the suite green there too.
if [ -z "${PY313:-}" ]; then
  for c in "$HOME"/.pyenv/versions/3.13*/bin/python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13; do
    if [ -x "$c" ] && "$c" --version >/dev/null 2>&1; then PY313=$c; break; fi
  done
fi
if [ -n "${PY313:-}" ] && [ "${MTLSKIT_SKIP_313:-}" != 1 ]; then
  if [ ! -x .venv313/bin/python ]; then "$PY313" -m venv .venv313; fi
  if [ ! -f .venv313/.ok ] || [ pyproject.toml -nt .venv313/.ok ]; then
    # The bench extras too: the bench smoke tests run uvicorn and granian.
    .venv313/bin/pip install -q --disable-pip-version-check -e '.[test,bench]' 2>&1 | grep -v "is ignored" >&2 || true
    .venv313/bin/python -c "import mtlskit, pytest, uvicorn, granian" && touch .venv313/.ok
  fi
  echo "== pytest on $(.venv313/bin/python --version)"
  .venv313/bin/pytest -q "$@"
fi

# The oldest dependency versions pyproject.toml admits (scripts/lowest-deps.txt): the
# TLS engine, server and verify tests, so a user on them gets a working server.
if [ "${MTLSKIT_SKIP_LOWEST:-}" != 1 ]; then
  if [ ! -f .venv-lowest/.ok ] || [ scripts/lowest-deps.txt -nt .venv-lowest/.ok ] || [ pyproject.toml -nt .venv-lowest/.ok ]; then
    rm -rf .venv-lowest
    "${PYTHON:-python3}" -m venv .venv-lowest
    # Only what these tests import beside mtlskit: the full test extra's tools (e.g.
    # import-linter) may need newer versions than mtlskit itself does.
    .venv-lowest/bin/pip install -q --disable-pip-version-check -c scripts/lowest-deps.txt -e . \
      'pytest>=8' 'httpx>=0.27' 2>&1 | grep -v "is ignored" >&2 || true
    .venv-lowest/bin/python -c "import mtlskit, pytest, httpx" && touch .venv-lowest/.ok
  fi
  echo "== pytest on the lowest dependencies: $(.venv-lowest/bin/python -c 'import cryptography, click, httptools; print("cryptography", cryptography.__version__, "click", click.__version__, "httptools", httptools.__version__)')"
  .venv-lowest/bin/pytest -q -p no:cacheprovider tests/test_server_tls_engine.py tests/test_server_basic.py \
    tests/test_server_chain.py tests/test_pki_verify.py tests/test_pki_verify_crl.py
fi
