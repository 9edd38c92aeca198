"""How many tokens one forward pass may hold in memory, besides the model's positions.

N_max and the all-tiles cap bound tiles, and the positions bound a pass's length, but at 7B width a
pass of 30k tokens still needs gigabytes of activations. The estimate per token (bytes), for one
decoder layer at a time (inference keeps no per-layer states, see `RegionFocusModule`):

    hidden + residual + normed input      3 d
    q, k, v and the attention output      2 d + 2 kv_heads head_dim
    MLP (gate, up, their product)         3 intermediate
    KV cache of the answer's prefill      2 layers kv_heads head_dim   (LLM only)
    inputs the caller holds (Qwen-VL)     3 d (+ d per deepstack level)

times the dtype's size, plus the RFM's 4-D key mask of released stage B (n x n booleans, what
sdpa gets for a mask with placeholders). The budget is 80 % of the CUDA device's memory (half the
host's on the CPU) less the model's weights, or LRS_FOCUS_PASS_MEMORY_MB: fixed per machine and
model, so the same question gets the same limits and trace.
`pass_tokens` is the longest pass that fits; the run stops zooming or caps all-tiles before a
longer RFM pass, and drops vision tokens before a longer LLM sequence
(`trace.budget` gives the figures). Qwen2.5-VL / Qwen3-VL focus passes have their own per-token cost
(`focus_token_bytes`); `vl_memory_limits` gives their limits under the same keys.
tests/method/pass_memory_probe.py measures what our passes hold at 7B widths against these.
"""

from __future__ import annotations

import math
import os
from typing import Any

ENV = "LRS_FOCUS_PASS_MEMORY_MB"


def budget_bytes(device: Any, weights: int = 0) -> int:
    """Bytes one pass may use on `device` (the env override first): 80 % of the CUDA device's memory,
    or half the host's, less the model's weights. Fixed per machine and model (not what happens to
    be free this second), so two runs of one question get the same limits and trace."""
    if os.environ.get(ENV):
        return int(float(os.environ[ENV]) * 2**20)
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        total = 0.8 * torch.cuda.get_device_properties(dev).total_memory
    else:
        import psutil

        total = 0.5 * psutil.virtual_memory().total
    return max(0, int(total) - int(weights))


def token_bytes(text_config: Any, dtype_bytes: int, kv_cache: bool, held: int = 0, mlp: bool = True,
                kv_layers: int | None = None) -> int:
    """Activation bytes per token of one decoder layer's forward (plus the KV cache when generating).

    `held`: d-wide tensors the caller keeps through the whole pass (Qwen-VL: the text embeddings, the
    image features concatenated and the merged input, plus one per deepstack level). `mlp` False: the
    layer stops after its attention (the Qwen-VL focus layer). `kv_layers`: layers whose keys and
    values stay cached (default: all when `kv_cache`, none otherwise)."""
    d = int(text_config.hidden_size)
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or d // heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    inter = int(getattr(text_config, "intermediate_size", 4 * d))
    per = (5 + int(held)) * d + 2 * kv * head_dim + (3 * inter if mlp else 0)
    if kv_layers is None:
        kv_layers = int(text_config.num_hidden_layers) if kv_cache else 0
    per += 2 * int(kv_layers) * kv * head_dim
    return per * dtype_bytes


def focus_token_bytes(text_config: Any, dtype_bytes: int, focus_layer: int, held: int) -> int:
    """Bytes per token of a Qwen-VL focus pass (model/qwen_vl.py), derived from what it runs:

    layers 0..L-1 whole and layer L up to its attention (the hook stops the forward there: no MLP
    when L is 0), the keys and values of layers 0..L kept in the prefix cache, and the hook's one
    attention row: the cached keys repeated to every head (dtype) and their float32 copy, heads x
    head_dim x (dtype + 4) bytes per token. The question's own pass (a few tokens against that cache)
    copies one layer's keys and values at a time (the cache's concatenation, the sdpa head repeat):
    less than the hook's float32 keys plus the activations counted. The feature cache's copy of the
    prefix (`pack_prefix`) is the feature cache's memory, not the pass's."""
    d = int(text_config.hidden_size)
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or d // heads)
    layer = token_bytes(text_config, dtype_bytes, kv_cache=False, held=held, mlp=focus_layer > 0,
                        kv_layers=focus_layer + 1)
    return layer + heads * head_dim * (dtype_bytes + 4)


def pass_tokens(budget: int, per_token: int, square_mask: bool = False) -> int:
    """The longest pass within `budget` bytes: n * per_token (+ n^2 mask bytes) <= budget."""
    if not square_mask:
        return max(0, budget // max(1, per_token))
    # n^2 + per_token n - budget = 0
    return max(0, int((-per_token + math.sqrt(per_token * per_token + 4 * budget)) / 2))


def refusal(what: str, need: int, limits: dict[str, int], key: str) -> str:
    """The words of a refusal: a pass needs `need` tokens, the budget holds `limits[key]`."""
    return (f"{what} needs {need} tokens, but {limits['memory_budget_bytes'] / 2**20:.0f} MB of memory hold "
            f"{limits[key]} tokens of this model ({ENV} or a free device raise it)")


def weights_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def memory_limits(model: Any) -> dict[str, int]:
    """{"memory_budget_bytes", "rfm_pass_tokens", "llm_pass_tokens"} for a LLaVA + RFM model now."""
    cfg = model.config.text_config
    size = model.dtype.itemsize if hasattr(model.dtype, "itemsize") else 4
    budget = budget_bytes(model.device, weights_bytes(model))
    return {"memory_budget_bytes": budget,
            "rfm_pass_tokens": pass_tokens(budget, token_bytes(cfg, size, kv_cache=False), square_mask=True),
            "llm_pass_tokens": pass_tokens(budget, token_bytes(cfg, size, kv_cache=True))}


def vl_memory_limits(model: Any, focus_layer: int) -> dict[str, int]:
    """The same keys for a Qwen2.5-VL / Qwen3-VL model (model/qwen_vl.py): `rfm_pass_tokens` bounds its
    focus passes (the counters' 'rfm' passes, `focus_token_bytes`), `llm_pass_tokens` the answer's
    prefill (every layer's KV cache). The vision tower runs per image (a tile or the thumbnail,
    `encode_batch` at a time): its memory does not grow with a pass's length and is left out."""
    cfg = model.hf.config.text_config
    size = model.dtype.itemsize
    held = 3 + int(model.deepstack)
    budget = budget_bytes(model.device, weights_bytes(model.hf))
    return {"memory_budget_bytes": budget,
            "rfm_pass_tokens": pass_tokens(budget, focus_token_bytes(cfg, size, int(focus_layer), held)),
            "llm_pass_tokens": pass_tokens(budget, token_bytes(cfg, size, kv_cache=True, held=held))}
