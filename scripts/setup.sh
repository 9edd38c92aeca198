#!/usr/bin/env bash
# One-step, idempotent set-up on Debian 12 or 13 (run as root, or with sudo available).
#
#   scripts/setup.sh          backend only: apt GDAL + a .venv with torch, GDAL bindings, the project
#   scripts/setup.sh --test   also QGIS (for the plugin tests), Xvfb, WordNet and the test extras
#
# Environment knobs:
#   PYTHON      interpreter the venv is made from (default: python3 on PATH)
#   TORCH_SPEC  torch requirement installed before the project (default: torch==2.13.0; on a GPU
#               workstation pick the CUDA build you want, e.g. "torch==2.13.0" from PyPI)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi

apt_pkgs=(gdal-bin libgdal-dev g++ make zip)
if [[ $WITH_TEST == 1 ]]; then
    apt_pkgs+=(qgis python3-qgis python3-zmq xvfb xauth wordnet-base wordnet-sense-index)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt: installing ${missing[*]} (Debian $(cat /etc/debian_version))"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "apt: all packages present"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "venv: creating $VENV from $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    log "pip: $TORCH_SPEC"
    "${PIP[@]}" install "$TORCH_SPEC"
fi

if ! "$VENV/bin/python" -c "from osgeo import gdal, gdal_array" 2>/dev/null; then
    gdal_version="$(gdal-config --version)"
    log "pip: GDAL $gdal_version bindings, built against apt's libgdal (about 30 s)"
    "${PIP[@]}" install numpy setuptools wheel
    # Without --no-build-isolation the numpy-based array module is silently left out.
    "${PIP[@]}" install --no-build-isolation --no-cache-dir "gdal==$gdal_version"
fi

extras=""
[[ $WITH_TEST == 1 ]] && extras="[test]"
stamp="$VENV/.lrs-focus-installed$extras"
if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
    log "pip: lrs-focus$extras (editable)"
    "${PIP[@]}" install -e "$ROOT$extras"
    touch "$stamp"
else
    log "pip: lrs-focus$extras up to date"
fi
log "done: $VENV/bin/lrs-focus"
