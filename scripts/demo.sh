#!/usr/bin/env bash
# The main job of the README: sets up a fresh machine (no browser needed), then trains a LoRA on the small
# built-in model and dataset inside a real ComfyUI and renders with it. Pass --keep-open to explore after.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
LORALAB_SKIP_BROWSER=1 bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
