"""What only a CUDA machine with flash-attn would show, emulated on the CPU (issue 21): the attention
kernel of released scoring, and that the passes keep only what they use."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from lrs_focus.model.prompts import encode_prompt

_spec = importlib.util.spec_from_file_location("lrs_flash_emulation", Path(__file__).with_name("flash_emulation.py"))
flash = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flash)

FAMILIES = ("qwen2", "llama")


def _released_stage_b(model, tok, seed=3, span=240, present_n=90):
    """A released stage-B sequence: a canvas of `span` entries, `present_n` real, the rest zero placeholders."""
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    prompt = encode_prompt(tok, model.config.template, "How many ships are docked at the northern pier?")
    thumb = torch.randn(model.config.thumbnail_tokens, d, generator=g)
    present = torch.zeros(span, dtype=torch.bool)
    present[torch.randperm(span, generator=g)[:present_n]] = True
    full = torch.randn(span, d, generator=g) * present[:, None]
    return model.build_sequence(prompt, thumb, full), present


def _scores(model, seq, present):
    with torch.no_grad():
        return model.rfm_scores(seq, present=present)


@pytest.mark.parametrize("family", FAMILIES)
def test_emulated_flash_attention_is_faithful_where_masks_mean_padding(tiny_models, family):
    """The emulator itself: real padding (trailing masked tokens) gives sdpa's outputs on the valid tokens,
    and an all-ones mask (no unpadding) gives sdpa's logits; otherwise the tests below prove nothing."""
    model, tok = tiny_models[family]
    llm = copy.deepcopy(model.llm)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 50, model.config.hidden_size, generator=g)
    mask = torch.ones(1, 50, dtype=torch.long)
    mask[0, 40:] = 0
    with torch.no_grad():
        ref_pad = llm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[0, :40]
        ref_all = llm(inputs_embeds=embeds, attention_mask=torch.ones_like(mask)).logits
        llm.config._attn_implementation = "flash_attention_2"
        with flash.emulated_flash_attention_2():
            fa_pad = llm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[0, :40]
            fa_all = llm(inputs_embeds=embeds, attention_mask=torch.ones_like(mask)).logits
    torch.testing.assert_close(fa_pad, ref_pad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fa_all, ref_all, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_scoring_stays_sdpa_when_the_model_runs_flash_attention(tiny_models, family):
    """With flash-attn for the model, the released stage-B score equals the sdpa score exactly; an RFM that
    followed the model's kernel would unpad the placeholder queries away and score differently."""
    model, tok = tiny_models[family]
    model = copy.deepcopy(model)
    seq, present = _released_stage_b(model, tok)
    ref = _scores(model, seq, present)  # sdpa everywhere
    with flash.emulated_flash_attention_2():
        model.set_attention("flash_attention_2")
        released = _scores(model, seq, present)
        model.rfm.config._attn_implementation = "flash_attention_2"  # what following the model would do
        unpadded = _scores(model, seq, present)
    model.set_attention("sdpa")
    assert model.llm.config._attn_implementation == "sdpa"
    torch.testing.assert_close(released, ref, rtol=0, atol=0)
    # the hazard is real: FA2 zeroes the placeholder rows, which the score then reads as keys
    assert (unpadded - ref).abs().max() > 1e-3 * ref.abs().max()


def test_the_llm_and_vision_tower_may_run_flash_attention(tiny_models):
    """No mask with placeholder semantics reaches the LLM (an all-ones 2-D mask: no unpadding) or CLIP (no
    mask): under flash-attn they compute what sdpa computes."""
    model, tok = tiny_models["qwen2"]
    model = copy.deepcopy(model)
    seq, _ = _released_stage_b(model, tok)
    px = torch.randint(0, 256, (2, 56, 56, 3), dtype=torch.uint8).numpy()
    with torch.no_grad():
        ref_logits, ref_feats = model.llm_forward(seq).logits[0, -1], model.project_images(px)
        with flash.emulated_flash_attention_2():
            model.set_attention("flash_attention_2")
            logits, feats = model.llm_forward(seq).logits[0, -1], model.project_images(px)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-5)


def test_clip_runs_only_up_to_the_feature_layer(tiny_models):
    """The features equal the stock `output_hidden_states` pick bit for bit, and the layers after the
    selected one never run (the released -2 drops the last layer)."""
    model, _ = tiny_models["llama"]
    px = model.pixels(torch.randint(0, 256, (3, 56, 56, 3), dtype=torch.uint8).numpy())
    layers = model.vision_tower.encoder.layers
    ran: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            feats = model.vision_features(px)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        stock = model.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states[model.config.vision_select_layer]
    assert torch.equal(feats, stock)
    assert ran == list(range(len(layers) - 1))


def test_rfm_score_keeps_no_per_layer_states(tiny_models):
    """Scoring asks for no per-layer states (training asks for them explicitly)."""
    model, tok = tiny_models["qwen2"]
    seq, present = _released_stage_b(model, tok)
    with torch.no_grad():
        h, states, _ = model.rfm.hidden_states(seq.embeds, seq.position_ids)
        h2, kept, _ = model.rfm.hidden_states(seq.embeds, seq.position_ids, keep_states=True)
    assert states == [] and len(kept) == len(model.rfm.layers) and torch.equal(h, h2)


@pytest.mark.parametrize("cuda", [True, False])
def test_stage_timings_wait_for_the_device_at_every_stage_edge_on_cuda(tiny_engine, sentinel2_vrt, monkeypatch, cuda):
    """With a CUDA device every timed stage edge (thumbnail, selection, each encode and RFM pass, generation)
    waits for the device before reading the clock; on the CPU nothing is synchronised."""
    from lrs_focus import stage_clock
    from lrs_focus.engine import AskOptions

    synced: list[str] = []
    monkeypatch.setattr(stage_clock, "synchronize", lambda device: synced.append(device))
    if cuda:
        monkeypatch.setattr(stage_clock, "is_cuda", lambda device: True)
    res = tiny_engine.ask(str(sentinel2_vrt), "How many ships are docked at the northern pier?",
                          AskOptions(mode="paper", max_new_tokens=2))
    levels = [lv for lv in res["trace"]["levels"] if lv["reached"]]
    edges = 2 * (3 + len(levels) + res["counts"]["rfm_passes"])  # start and end of each timed stage
    assert len(synced) == (edges if cuda else 0)
    assert {"thumbnail", "encode", "focus", "select", "generate"} <= set(res["timings"])


def test_passes_are_bounded_by_a_memory_budget(tiny_engine, sentinel2_vrt, monkeypatch):
    """With 2 MB for a pass (LRS_FOCUS_PASS_MEMORY_MB), paper mode stops zooming before an RFM pass that
    would not fit, the LLM's sequence drops vision tokens to fit, and the trace gives the figures; with
    almost nothing the question is refused with them."""
    from lrs_focus import errors, pass_memory
    from lrs_focus.engine import AskOptions

    question = "How many ships are docked at the northern pier?"
    free = tiny_engine.ask(str(sentinel2_vrt), question, AskOptions(mode="paper", max_new_tokens=2))
    monkeypatch.setenv(pass_memory.ENV, "2")
    doc = tiny_engine.ask(str(sentinel2_vrt), question, AskOptions(mode="paper", max_new_tokens=2))
    budget, counts = doc["trace"]["budget"], doc["counts"]
    assert budget["memory_budget_bytes"] == 2 << 20
    assert 0 < budget["rfm_pass_tokens"] < free["counts"]["rfm_max_pass_tokens"]
    assert counts["rfm_max_pass_tokens"] <= budget["rfm_pass_tokens"]
    assert "zoom_stopped" in doc["trace"] and doc["trace"]["stopped_at"] < free["trace"]["stopped_at"]
    assert counts["llm_sequence_tokens"] <= budget["llm_pass_tokens"] < budget["max_length"]
    monkeypatch.setenv(pass_memory.ENV, "0.05")
    with pytest.raises(errors.BadOptions, match="tokens of this model"):
        tiny_engine.ask(str(sentinel2_vrt), question, AskOptions(mode="paper", max_new_tokens=2))
