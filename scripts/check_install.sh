#!/usr/bin/env bash
# `pip install .` in a fresh virtual environment (torch first, as scripts/setup.sh installs
# it) gives a working tool: the declared dependencies alone render one shape headless.
# Needs the apt packages of scripts/setup.sh (libosmesa6). Run by scripts/test.sh unless
# SKIP_INSTALL_CHECK=1; pip's cache makes a second run quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
PIP=("$tmp/venv/bin/python" -m pip -q --disable-pip-version-check)
"${PIP[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
"${PIP[@]}" install .
cd "$tmp"  # not the checkout: the installed package must be the one imported
PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}" HF_HUB_OFFLINE=1 "$tmp/venv/bin/cdc-aug" render \
    --source procedural --categories chair --max-shapes 1 --views 1 --size 32 --gt-surface-points 100 \
    --gt-sdf-points 64 --gt-occ-points 100 --no-progress --out "$tmp/renders" | tee "$tmp/out.txt"
grep -q "1 views of 1 shapes in 1 shards; 0 shapes failed" "$tmp/out.txt"
echo "[check_install] pip install . renders: OK"
