"""Measure what our Qwen-VL passes hold per token at Qwen2.5-VL-7B's text widths (run as a script).

`python pass_memory_probe.py focus|answer N1 N2 [...]` builds the real Qwen2.5-VL class with ONE decoder
layer of the 7B's text config (hidden 3584, 28 heads, 4 KV heads, head 128, intermediate 18944; a
64-token vocabulary and a one-block vision tower, which the passes never run), random bf16 weights
on the CPU, and runs our own code on prompts of N1 and N2 tokens (one image of N - 20 tokens):
`focus` = `QwenVLFocusModel._run_prefix` + `attention_row` with focus layer 0, `answer` =
`generate_pruned` (the prefill with every layer's KV cache, one new token). It prints JSON: the
peak resident memory above the state before each pass (VmHWM, reset through /proc/self/clear_refs),
per token as the slope between the two lengths (fixed costs cancel), and pass_memory's estimate.
Run it with MALLOC_MMAP_THRESHOLD_=65536: glibc then maps every large tensor on its own and gives it
back when freed, so the high-water mark follows live tensors, not the heap's retained free space
(torch has no CPU allocator statistics)."""

from __future__ import annotations

import gc
import json
import sys
import types

import torch


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def seven_b(layers: int = 1):
    """A Qwen2.5-VL of the 7B's text widths and `layers` decoder layers, bf16, random weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from lrs_focus.model.qwen_vl import QwenVLFocusModel, VLFocusConfig

    text = dict(vocab_size=64, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=3584, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=60, video_token_id=61,
                           vision_start_token_id=62, vision_end_token_id=63)
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "sdpa"
    with torch.device("meta"):  # no 0.5 GB random init: the values do not change what a pass holds
        hf = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    hf = hf.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_((torch.rand(p.shape[-1]) * 0.02 - 0.01).expand_as(p))
        lm = hf.model.language_model
        lm.rotary_emb = type(lm.rotary_emb)(hf.config.text_config)  # its frequencies, not meta garbage
    stub_tok = types.SimpleNamespace(decode=lambda ids, skip_special_tokens=True: "")
    stub_ip = types.SimpleNamespace(merge_size=2)
    return QwenVLFocusModel(hf, stub_tok, stub_ip, VLFocusConfig("qwen2.5-vl", hf.config.text_config, 28, 0))


def peak_of(model, phase: str, n: int) -> int:
    """Peak bytes above the state before one pass over a prompt of n tokens."""
    from lrs_focus.model.qwen_vl import Prompt

    m = n - 20
    ids = [3] * 9 + [62] + [60] * m + [63]
    prefix = len(ids)
    ids += [5] * (n - len(ids))
    prompt = Prompt(ids, [(None, (1, 4, m))], [10], prefix)
    feats = [torch.rand(m, 3584).to(torch.bfloat16)]
    with torch.inference_mode():
        inputs = model.model_inputs(prompt)
        gc.collect()
        base = _vm("VmRSS")
        _reset_peak()
        if phase == "focus":
            cache = model._run_prefix(inputs, feats, prefix)
            model.attention_row(inputs["input_ids"][:, prefix:], inputs["position_ids"][..., prefix:], cache)
        else:
            model.generate_pruned(prompt, feats, [torch.arange(m)], 1)
        peak = _vm("VmHWM") - base
    return peak


def main(model, phase: str, n1: int, n2: int) -> dict:
    from lrs_focus import pass_memory

    cfg = model.hf.config.text_config
    p1, p2 = peak_of(model, phase, n1), peak_of(model, phase, n2)
    held = 3 + model.deepstack
    if phase == "focus":
        estimate = pass_memory.focus_token_bytes(cfg, 2, 0, held)
    else:
        estimate = pass_memory.token_bytes(cfg, 2, kv_cache=True, held=held)
    return {"phase": phase, "tokens": [n1, n2], "peak_bytes": [p1, p2], "measured_per_token": (p2 - p1) / (n2 - n1),
            "estimate_per_token": estimate}


if __name__ == "__main__":  # PHASE N1 N2 [PHASE N1 N2 ...]: one JSON line per phase, one model
    torch.set_num_threads(2)
    seven = seven_b()
    args = sys.argv[1:]
    for k in range(0, len(args), 3):
        print(json.dumps(main(seven, args[k], int(args[k + 1]), int(args[k + 2]))), flush=True)
