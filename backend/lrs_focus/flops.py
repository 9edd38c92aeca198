"""Analytic prefill cost, in the convention of the paper's Table 4 (from FastV / PyramidDrop).

Per decoder layer and n tokens: n * (4 d^2 + 3 d m) + 2 n^2 d, with d the hidden size and m the
MLP size (multiply-adds of q/k/v/o as four d x d maps, the three MLP matrices, and the two n x n
attention products). With the Qwen2-7B shape (d 3584, m 18944, 28 layers) this gives exactly the
paper's 243.37 TFLOPs for anyres-p144's 21,312 vision tokens at 4000^2, 43.75 for 5,328 and 83.56
for 9,280. Our method adds the RFM: R - 1 full layers per RFM pass over that pass's sequence (the
last RFM layer computes one query row, negligible), which reproduces the paper's 82.56 TFLOPs
for "RFM prune" (5,760 tokens to the LLM after an RFM pass over 21,312).

Token counts follow the paper: vision tokens only (the text prompt is left out).
"""

from __future__ import annotations

from typing import Any, Iterable


def layer_flops(n_tokens: int, hidden: int, intermediate: int) -> float:
    n = float(n_tokens)
    return n * (4.0 * hidden * hidden + 3.0 * hidden * intermediate) + 2.0 * n * n * hidden


def llm_prefill_flops(n_tokens: int, hidden: int, intermediate: int, llm_layers: int) -> float:
    return llm_layers * layer_flops(n_tokens, hidden, intermediate)


def method_prefill_tflops(
    llm_tokens: int, rfm_pass_tokens: Iterable[int], hidden: int, intermediate: int, llm_layers: int, rfm_layers: int
) -> float:
    """LLM prefill on the final tokens + (rfm_layers - 1) layers per RFM pass, in TFLOPs."""
    total = llm_prefill_flops(llm_tokens, hidden, intermediate, llm_layers)
    for n in rfm_pass_tokens:
        total += max(rfm_layers - 1, 0) * layer_flops(n, hidden, intermediate)
    return total / 1e12


def shape_of(text_config: Any) -> dict[str, int]:
    return {
        "hidden": int(text_config.hidden_size),
        "intermediate": int(text_config.intermediate_size),
        "llm_layers": int(text_config.num_hidden_layers),
    }


#: the LLM shapes of the released models (for the benchmark, no weights needed)
QWEN2_7B = {"hidden": 3584, "intermediate": 18944, "llm_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4}
VICUNA_7B = {"hidden": 4096, "intermediate": 11008, "llm_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}
