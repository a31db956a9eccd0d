#!/usr/bin/env bash
# Set up and run the main job: the seed's whole flow (PKI -> server -> client -> hello world).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/mtlskit demo "$@"
