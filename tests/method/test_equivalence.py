"""Equivalences: our assembly vs stock transformers, fast RFM score vs full eager attention maps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2ForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from lrs_focus.answer import pyramid_config
from lrs_focus.llava_answer import RfmScorer, final_sequence
from lrs_focus.features import TileEncoder
from lrs_focus.focus import run_focus
from lrs_focus.model.prompts import encode_prompt, separator_id
from lrs_focus.pyramid import ImagePyramid

FAMILIES = ["qwen2", "llama"]
STOCK = {"qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM}


def _reference_vision(model, images: np.ndarray) -> torch.Tensor:
    """Stock CLIP (fresh instance, same weights) -> layer -2 without CLS -> projector: (N, P, P, d)."""
    clip = CLIPVisionModel(model.config.vision_config)
    clip.load_state_dict(model.vision_tower.state_dict())
    clip.eval()
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    feats = clip(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
    p = int(feats.shape[1] ** 0.5)
    return model.projector(feats).view(len(images), p, p, -1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(300, 420), (500, 190)])
def test_pipeline_without_pruning_matches_stock_forward(tiny_models, array_source, family, size):
    """All tiles of a level, nothing pruned: our sequence + forward == a naive reference through stock classes."""
    model, tok = tiny_models[family]
    src = array_source(*size, seed=3)
    pyr = ImagePyramid(src, pyramid_config(model))
    geo = pyr.geometry
    prompt = encode_prompt(tok, model.config.template, "What is the color of the largest building?")
    with torch.no_grad():
        thumb = model.encode_thumbnail(pyr.thumbnail())
        encoder = TileEncoder(model, pyr, None, None, lambda *a: None)
        result = run_focus(geo, "all-tiles", encoder, RfmScorer(model, prompt, thumb), max_levels=2)
        ours = model.llm_forward(final_sequence(model, prompt, thumb, result)).logits

        # naive reference, built from the layout of DESIGN 3.1 with stock classes only
        lv = geo.levels[1]
        n_r, n_c = lv.grid
        t = geo.cfg.tokens_per_tile
        tiles = np.stack([pyr.tile(1, r, c) for r in range(n_r) for c in range(n_c)])
        proj = _reference_vision(model, tiles).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(proj, 2).permute(0, 2, 3, 1)  # 2x2 average pool
        rows, cols = geo.token_grid(1)
        grid = torch.zeros(n_r * t, n_c * t, pooled.shape[-1])
        for i in range(n_r):
            for j in range(n_c):
                grid[i * t : (i + 1) * t, j * t : (j + 1) * t] = pooled[i * n_c + j]
        local = []
        for r in range(rows):
            local.append(grid[r, :cols])
            local.append(model.image_newline[None])
        thumb_ref = _reference_vision(model, pyr.thumbnail()[None]).flatten(1, 2)[0]
        stock = STOCK[family](copy.deepcopy(model.config.text_config))
        stock.load_state_dict(model.llm.state_dict())
        stock.eval()
        emb = stock.get_input_embeddings()
        ids = lambda xs: emb(torch.tensor(xs))  # noqa: E731
        embeds = torch.cat(
            [ids(prompt.prefix), thumb_ref, ids([separator_id(tok)]), torch.cat(local), ids(prompt.suffix)]
        )[None]
        ref = stock(inputs_embeds=embeds).logits
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _eager_rfm_scores(model, seq) -> torch.Tensor:
    """Score read off full attention maps: every RFM layer in eager mode, last layer's weights returned."""
    rfm = copy.deepcopy(model.rfm)
    cfg = rfm.config
    cfg._attn_implementation = "eager"
    embeds, pos = seq.embeds, seq.position_ids
    pos_emb = rfm.rotary_emb(embeds, position_ids=pos)
    ones = torch.ones(embeds.shape[:2], dtype=torch.long)
    mask = create_causal_mask(config=cfg, inputs_embeds=embeds, attention_mask=ones, cache=None, position_ids=pos)
    assert mask is not None and mask.dim() == 4, "eager needs a materialised causal mask"
    h = embeds
    for layer in rfm.layers[:-1]:
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pos_emb)
    last = rfm.layers[-1]
    _, weights = last.self_attn(hidden_states=last.input_layernorm(h), position_embeddings=pos_emb, attention_mask=mask)
    row = weights[0, :, seq.query_index, seq.tiles]  # (heads, m): full softmax restricted to tile keys
    row = row / row.sum(dim=-1, keepdim=True)  # = softmax over the tile keys only
    return row.mean(dim=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gaps", [False, True])
def test_fast_rfm_score_equals_eager_attention_maps(tiny_models, family, gaps):
    model, tok = tiny_models[family]
    g = torch.Generator().manual_seed(7)
    d = model.config.hidden_size
    prompt = encode_prompt(tok, model.config.template, "How many ships are docked at the northern pier?")
    thumb = torch.randn(model.config.thumbnail_tokens, d, generator=g)
    tiles = torch.randn(90, d, generator=g)
    offsets = span = None
    if gaps:  # released stage B: absent tiles keep their positions
        offsets = torch.sort(torch.randperm(200, generator=g)[:90]).values
        span = 200
    with torch.no_grad():
        seq = model.build_sequence(prompt, thumb, tiles, tile_offsets=offsets, tile_span=span)
        fast = model.rfm_scores(seq)
        ref = _eager_rfm_scores(model, seq)
    assert fast.shape == (90,)
    torch.testing.assert_close(fast.sum(), torch.tensor(1.0))
    torch.testing.assert_close(fast, ref.float(), rtol=1e-5, atol=1e-6)
    if gaps:  # positions really matter: contiguous positions give different scores
        seq2 = model.build_sequence(prompt, thumb, tiles)
        assert not torch.allclose(model.rfm_scores(seq2), fast)


def _rfm_of(text):
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig

    from lrs_focus.model.config import LrsFocusConfig
    from lrs_focus.model.modeling import RegionFocusModule

    cfg = LrsFocusConfig("qwen2", text, CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, patch_size=14, image_size=336))
    with init_empty_weights():
        return cfg, RegionFocusModule(cfg)


def test_rfm_head_layout_follows_released_rule():
    """The RFM's layers have the LLM's own heads (the public pruner builds them from the LLM config);
    the score scale is 1/sqrt(hidden // (hidden // 128)): 128 for the 7B shapes."""
    from transformers import Qwen2Config

    text = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064)
    cfg, rfm = _rfm_of(text)
    assert len(rfm.layers) == 5
    attn = rfm.layers[-1].self_attn
    assert rfm.config.num_attention_heads == 28 and attn.head_dim == 128 and rfm.score_dim == 128
    assert attn.scaling == pytest.approx(128 ** -0.5)
    assert tuple(attn.k_proj.weight.shape) == (4 * 128, 3584)
    assert cfg.rfm_init_layers == [0, 1, 5, 11, 14]
    assert (cfg.n_max, cfg.max_length, cfg.tokens_per_tile, cfg.thumbnail_tokens) == (80, 8192, 12, 576)


def test_rfm_heads_are_the_llms_where_hidden_over_128_differs():
    """An LLM with 16 heads of 256 (hidden 4096, GQA 4): `hidden // 128` would give 32 heads of 128 and
    KV projections of another shape, so the LLM layers the RFM is initialised from would not load."""
    from transformers import Qwen2Config

    text = Qwen2Config(hidden_size=4096, intermediate_size=256, num_hidden_layers=16, num_attention_heads=16,
                       num_key_value_heads=4, vocab_size=1000)
    _, rfm = _rfm_of(text)
    attn = rfm.layers[0].self_attn
    assert rfm.config.num_attention_heads == 16 and attn.head_dim == 256
    assert tuple(attn.k_proj.weight.shape) == (4 * 256, 4096)  # the LLM's own k_proj shape
    assert rfm.score_dim == 128  # the released score scale, whatever the heads


def test_init_rfm_from_llm_copies_layers(tiny_models):
    model, _ = tiny_models["qwen2"]
    model = copy.deepcopy(model)
    used = model.init_rfm_from_llm()
    assert used == [0, 1, 3]
    for dst, i in zip(model.rfm.layers, used):
        for (k, a), (_, b) in zip(dst.state_dict().items(), model.llm.model.layers[i].state_dict().items()):
            assert torch.equal(a, b), k
    assert torch.equal(model.rfm.norm.weight, model.llm.model.norm.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_stage_b_score_reproduces_the_public_mask_quirk(tiny_models, family):
    """The public `get_text_image_attn`: the level-1 canvas runs whole (absent tiles = zero embeddings,
    masked as keys in layers 0..R-2); at the score the 4-D float mask is cast to bool and *added*, so
    placeholder keys stay in the softmax with logit + 1. Reference written from that code, eager."""
    model, tok = tiny_models[family]
    g = torch.Generator().manual_seed(11)
    d = model.config.hidden_size
    prompt = encode_prompt(tok, model.config.template, "How many ships are docked at the northern pier?")
    thumb = torch.randn(model.config.thumbnail_tokens, d, generator=g)
    span = 120
    present = torch.rand(span, generator=g) > 0.4
    canvas = torch.randn(span, d, generator=g) * present[:, None]  # placeholders are zeros
    with torch.no_grad():
        seq = model.build_sequence(prompt, thumb, canvas)
        ours = model.rfm_scores(seq, present=present)
        valid = torch.ones(seq.length, dtype=torch.bool)
        valid[seq.tiles] = present
        n = seq.length
        rfm = copy.deepcopy(model.rfm)
        rfm.config._attn_implementation = "eager"
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) & valid[None, :]
        mask4d = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        pos_emb = rfm.rotary_emb(seq.embeds, position_ids=seq.position_ids)
        h = seq.embeds
        for layer in rfm.layers[:-1]:
            h = layer(h, attention_mask=mask4d, position_ids=seq.position_ids, position_embeddings=pos_emb)
        last = rfm.layers[-1]
        x = last.input_layernorm(h)
        attn = last.self_attn
        hd = attn.head_dim
        q = attn.q_proj(x).view(1, n, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(1, n, -1, hd).transpose(1, 2)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        q, k = apply_rotary_pos_emb(q, k, *pos_emb)
        k = repeat_kv(k, q.shape[1] // k.shape[1])
        qi = seq.query_index
        logits = (q[0, :, qi:qi + 1] @ k[0].transpose(-1, -2))[:, 0] / hd ** 0.5  # (heads, n)
        logits = logits + (mask4d[0, 0, seq.query_index] != 0).float()  # the bool cast, added
        ref = torch.softmax(logits[:, seq.tiles], dim=-1).mean(dim=0)
        plain = model.rfm_scores(model.build_sequence(prompt, thumb, canvas[present],
                                                      tile_offsets=torch.nonzero(present)[:, 0], tile_span=span))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    assert float(ours[~present].sum()) > 0.05  # placeholders really take attention mass
    assert not torch.allclose(ours[present] / ours[present].sum(), plain, atol=1e-4)
