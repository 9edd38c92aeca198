"""bf16 as a GPU runs it, checked on the CPU: numerics buffers stay float32, results stay float32's.

A narrow model with the 7B's head size (128) and Qwen2-7B's rope theta (1e6), sequences of several
thousand tokens: where a bf16 rotary table is off by radians. q/k projections are scaled up so that
random-weight attention is peaked and position-sensitive, as a trained model's is (at init it is
nearly uniform and would hide the error).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig, Qwen2Config

from lrs_focus.model.config import LrsFocusConfig
from lrs_focus.model.modeling import LrsFocusModel
from lrs_focus.model.prompts import encode_prompt, separator_id
from lrs_focus.model.tiny import build_tokenizer

N_TILE_TOKENS = 4000


@pytest.fixture(scope="module")
def narrow():
    tok = build_tokenizer()
    text = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=128, max_position_embeddings=32768,
                       rope_theta=1e6, tie_word_embeddings=False)
    text._attn_implementation = "sdpa"
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=56, patch_size=7)
    cfg = LrsFocusConfig("qwen2", text, vision, rfm_layer_list=[1], rfm_head_dim=128, tile_size=56, base_long_side=168)
    torch.manual_seed(0)
    model = LrsFocusModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    model.separator_token_id = separator_id(tok)
    g = torch.Generator().manual_seed(1)
    inputs = (encode_prompt(tok, "chatml", "How many ships are docked at the northern pier?"),
              torch.randn(64, 256, generator=g), torch.randn(N_TILE_TOKENS, 256, generator=g))
    return model, inputs, _run(model, inputs)


def _run(model, inputs):
    prompt, thumb, tiles = inputs
    with torch.no_grad():
        seq = model.build_sequence(prompt, thumb, tiles)
        assert seq.position_ids.max() > N_TILE_TOKENS  # realistic positions
        return model.rfm_scores(seq).float(), model.llm_forward(seq).logits[0, -1].float()


def _agreement(scores, logits, ref_scores, ref_logits):
    k = N_TILE_TOKENS // 4
    overlap = len(set(torch.topk(scores, k).indices.tolist()) & set(torch.topk(ref_scores, k).indices.tolist())) / k
    return {
        "tv": 0.5 * float((scores - ref_scores).abs().sum()),  # total variation between score distributions
        "top25_overlap": overlap,
        "logits_rel_err": float((logits - ref_logits).norm() / ref_logits.norm()),
    }


def test_cast_keeps_numerics_buffers_float32(narrow):
    model, _, _ = narrow
    bf16 = copy.deepcopy(model).cast(torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.llm.lm_head.weight.dtype == torch.bfloat16
    for rope in (bf16.llm.model.rotary_emb, bf16.rfm.rotary_emb):
        assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, model.llm.model.rotary_emb.inv_freq)
        assert rope.original_inv_freq.dtype == torch.float32
    assert bf16._pixel_mean.dtype == bf16._pixel_std.dtype == torch.float32


def test_bf16_rfm_scores_and_logits_agree_with_float32(narrow):
    model, inputs, (ref_scores, ref_logits) = narrow
    bf16 = copy.deepcopy(model).cast(torch.bfloat16)
    agree = _agreement(*_run(bf16, inputs), ref_scores, ref_logits)
    assert agree["tv"] < 0.05 and agree["top25_overlap"] > 0.95 and agree["logits_rel_err"] < 0.03, agree


def test_the_cast_bug_is_caught(narrow):
    """`module.to(bfloat16)` (rotary tables in bf16) fails the same bounds by far."""
    model, inputs, (ref_scores, ref_logits) = narrow
    buggy = copy.deepcopy(model).to(torch.bfloat16)
    assert buggy.llm.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    agree = _agreement(*_run(buggy, inputs), ref_scores, ref_logits)
    assert agree["tv"] > 0.3 and agree["top25_overlap"] < 0.8 and agree["logits_rel_err"] > 0.1, agree


def test_loaders_give_float32_buffers_in_bf16():
    from lrs_focus.model.loading import load_model

    model, _, info = load_model("tiny", device="cpu", dtype=torch.bfloat16)
    assert info["dtype"] == "bfloat16" and model.dtype == torch.bfloat16
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert model.rfm.rotary_emb.inv_freq.dtype == torch.float32
    assert model._pixel_mean.dtype == torch.float32


def test_engine_dtype_names():
    from lrs_focus import errors
    from lrs_focus.model.loading import parse_dtype

    assert parse_dtype("bf16") == parse_dtype("bfloat16") == torch.bfloat16
    assert parse_dtype("float32") == torch.float32 and parse_dtype(None) is None
    with pytest.raises(errors.BadOptions, match="dtype"):
        parse_dtype("int8")
