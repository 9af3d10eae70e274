#!/usr/bin/env bash
# The test command of the README: sets up a fresh machine (scripts/setup.sh), then runs the unit tests of
# the editor's pure JS modules and every Python test: engine unit tests and end-to-end tests that drive a
# real ComfyUI on 127.0.0.1 through its HTTP API and its graph editor in a real Chromium.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
if compgen -G "tests/js/*.test.mjs" >/dev/null; then
  node --test tests/js/
fi
exec .venv/bin/python -m pytest tests -q -rs --timeout 1800 "$@"
