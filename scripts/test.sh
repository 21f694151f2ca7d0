#!/usr/bin/env bash
# The README's test command: set up, then run the test suite (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Go renders Ollama's TEMPLATEs exactly as Ollama does; the template-equivalence tests use it.
if ! command -v go >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q golang-go >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q golang-go >/dev/null 2>&1)) \
    || echo "test: golang-go not installed; Go template tests will be skipped" >&2
fi
# The third-party plugins under plugins/ are separate distributions; CI installs them like a
# user would and runs their own tests (which use the contract kit, edgelora.testing).
.venv/bin/pip install -q -e "plugins/edgelora-llamacpp-server[test]" -e "plugins/edgelora-hf-merged[test]"
if [ $# -eq 0 ]; then
  set -- tests plugins/edgelora-llamacpp-server/tests plugins/edgelora-hf-merged/tests
fi
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
