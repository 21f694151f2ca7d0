#!/usr/bin/env bash
# The README's main command: set up, then build the demo project on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=demo scripts/setup.sh
start=$(date +%s)
.venv/bin/edgelora build demo "$@"
echo "demo: build took $(( $(date +%s) - start )) s" >&2
