#!/usr/bin/env bash
# GPU check at real scale (issue "Correct at real scale"), as one prepared command for a CUDA machine:
#   scripts/gpu_check.sh                      Qwen2-7B geometry, random bf16 weights, 27328 x 20000 raster
#   scripts/gpu_check.sh --size 5000x5000     another raster size
#   scripts/gpu_check.sh --preset qwen2.5-vl-7b   (or qwen3-vl-8b) a stock Qwen-VL at real shapes, attention focus
# Needs torch with CUDA and transformers (no GDAL, no weights download). Prints JSON on stdout and a
# summary on stderr; writes gpu_check.json into $OUT (or the current folder).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    PY=python3  # a machine's own PyTorch (GPU images); the project's .venv when it has torch
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; fi
fi
echo "gpu_check: $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__)')" >&2
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" scripts/gpu_check.py "$@"
