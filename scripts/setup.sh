#!/usr/bin/env bash
# Set up cdc-aug on a Debian/Ubuntu machine: system packages, a virtual environment
# in .venv, a CPU build of torch (unless one is already there), the project itself.
# Safe to run again: every step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# libosmesa6: headless OpenGL for pyrender; sweethome3d-furniture: the default shape
# corpus; mate-backgrounds: photographs for the copy-paste baseline; plasma-workspace-wallpapers:
# held-out photographs for the experiments' out-of-domain test set (configs/backgrounds/).
APT_PKGS=(libosmesa6 libgl1 python3-venv python3-dev sweethome3d-furniture mate-backgrounds
          plasma-workspace-wallpapers)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] apt-get install ${missing[*]}"
    $SUDO apt-get update -qq </dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; "$PY" -m venv .venv; }
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)

# torch first and pinned: a bare requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] pip install torch==${TORCH_VERSION:-2.13.0}"
    "${PIP[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
fi

stamp=.venv/.cdc-aug-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # pyrender 0.1.45 (installed here before) and its maintained fork own the same files
    if .venv/bin/python -m pip show -q pyrender >/dev/null 2>&1; then "${PIP[@]}" uninstall -y pyrender; fi
    echo "[setup] pip install -e .[dev]"
    "${PIP[@]}" install -e ".[dev]"
    echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, diffusers, lightning; print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, lightning {lightning.__version__}")')"
