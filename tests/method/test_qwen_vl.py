"""Qwen2.5-VL / Qwen3-VL behind the method's seam, on toy checkpoints of the real classes.

Each test checks a claim of model/qwen_vl.py against stock transformers: the one-row attention hook
equals eager attention, early exit and prefix reuse equal a full pass, token i of a tile covers the
pixels it is said to cover, `mm_token_type_ids` reaches every multimodal forward, and thumbnail mode
generates exactly what the stock processor + `generate` pipeline generates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_focus.model.loading import load_model
from lrs_focus.model.qwen_vl_loading import save_tiny_vl

FAMILIES = ["qwen2.5-vl", "qwen3-vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def vl(request):
    model, tokenizer, info = load_model(f"tiny-{request.param}", device="cpu")
    return model


def _images(model, n_tiles=2, seed=0):
    rng = np.random.default_rng(seed)
    b = model.config.tile_size
    tiles = (rng.random((n_tiles, b, b, 3)) * 255).astype(np.uint8)
    thumb = (rng.random((b, b * 2 // 3, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        tile_feats = model.encode_tiles(tiles)
        thumb_feats = model.encode_thumbnail(thumb)
    grids = [(None, model.grid_for(*thumb.shape[:2]))] + [("Detail of the top of the image:", model.grid_for(b, b))] * n_tiles
    return tiles, thumb, [thumb_feats] + [f.flatten(0, 1) for f in tile_feats], grids


def _eager_row(model, prompt, feats, layer):
    """The focus layer's attention row of the last token, from the stock forward under eager attention."""
    cfgs = [model.hf.config, model.hf.config.text_config]
    old = [c._attn_implementation for c in cfgs]
    for c in cfgs:
        c._attn_implementation = "eager"
    try:
        inputs = model.model_inputs(prompt)
        with torch.inference_mode():
            out = model.hf.model(input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                 image_grid_thw=inputs["image_grid_thw"], mm_encoder_outputs=model.encoder_outputs(feats),
                                 output_attentions=True)
        image = torch.nonzero(inputs["mm_token_type_ids"][0])[:, 0]
        return out.attentions[layer][0, :, -1].float(), image
    finally:
        for c, o in zip(cfgs, old):
            c._attn_implementation = o


def test_hook_row_equals_eager_row_and_layers_above_never_run(vl):
    _, _, feats, grids = _images(vl)
    prompt = vl.build_prompt(grids, "How many ships are docked?")
    for layer in range(vl.config.num_layers):
        calls = []
        handles = [lay.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
                   for i, lay in enumerate(vl.layers)]
        try:
            with torch.inference_mode():
                ours = vl.focus_map(prompt, feats, layer=layer)
        finally:
            for h in handles:
                h.remove()
        assert max(calls) == layer  # early exit: nothing above the focus layer ran
        eager, image = _eager_row(vl, prompt, feats, layer)
        assert torch.allclose(ours, eager.mean(0)[image], atol=1e-7, rtol=1e-5)
        with torch.inference_mode():
            two = vl.focus_map(prompt, feats, layer=layer, heads=[0, 3])
        assert torch.allclose(two, eager[[0, 3]].mean(0)[image], atol=1e-7, rtol=1e-5)


def test_prefix_reuse_equals_full_pass_and_is_left_as_found(vl):
    _, _, feats, grids = _images(vl)
    with torch.inference_mode():
        first = vl.build_prompt(grids, "Where is the harbour?")
        prefix = vl.prefix_cache(first, feats)
        length = prefix.cache.get_seq_length()
        for question in ("Where is the harbour?", "Is there a bridge over the river?", "Count the ships."):
            prompt = vl.build_prompt(grids, question)
            assert prompt.prefix_length == first.prefix_length == length
            reused = vl.focus_map(prompt, feats, prefix=prefix)
            fresh = vl.focus_map(prompt, feats)
            assert torch.equal(reused, fresh)
            eager, image = _eager_row(vl, prompt, feats, vl.config.focus_layer)
            assert torch.allclose(reused, eager.mean(0)[image], atol=1e-7, rtol=1e-5)
            assert prefix.cache.get_seq_length() == length  # the suffix was cut back off
        relative = vl.focus_map(prompt, feats, relative=True, prefix=prefix)
        generic = vl.focus_map(vl.build_prompt(grids, "Write a general description of the image."), feats)
    assert torch.allclose(relative, fresh / generic, rtol=1e-5)


def test_each_token_covers_its_own_pixels(vl):
    """Perturbing one token-sized cell of a tile changes that token's features far more than any other."""
    tiles, _, _, _ = _images(vl, n_tiles=1)
    px, t = vl.config.token_px, vl.config.tokens_per_tile
    with torch.inference_mode():
        base = vl.encode_tiles(tiles)[0]
        for r, c in [(0, 0), (5, 11), (t - 1, t - 1), (9, 2)]:
            moved = tiles.copy()
            moved[0, r * px:(r + 1) * px, c * px:(c + 1) * px] = 255 - moved[0, r * px:(r + 1) * px, c * px:(c + 1) * px]
            diff = (vl.encode_tiles(moved)[0] - base).abs().sum(-1)
            assert tuple(np.unravel_index(int(diff.argmax()), diff.shape)) == (r, c)
            others = diff.clone()
            others[r, c] = 0
            assert float(diff[r, c]) > 10 * float(others.max())


def test_mm_token_type_ids_and_3d_positions_reach_every_forward(vl, tmp_path):
    """Qwen2.5-VL falls back to 1-D positions without mm_token_type_ids: every multimodal forward of an
    ask must carry them, and explicit M-RoPE positions equal the model's own get_rope_index."""
    from lrs_focus.engine import AskOptions, Engine
    from lrs_focus.samples import write_synthetic_raster

    raster = tmp_path / "r.tif"
    write_synthetic_raster(str(raster), 700, 520)
    seen = []
    original = vl.hf.model.forward

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and bool((ids == vl.image_token_id).any()):
            seen.append(kwargs)
        return original(*args, **kwargs)

    engine = Engine.__new__(Engine)
    engine.model, engine.tokenizer, engine.name, engine.cache = vl, vl.tokenizer, "tiny", None
    engine.info = {"random_weights": True, "device": "cpu", "dtype": "float32"}
    vl.hf.model.forward = spy
    try:
        engine.ask(str(raster), "Where is the field?", AskOptions(mode="paper", max_new_tokens=2))
    finally:
        vl.hf.model.forward = original
    assert seen  # the focus passes and the answer's prefill
    for kwargs in seen:
        assert kwargs.get("mm_token_type_ids") is not None
        ids, types = kwargs["input_ids"], kwargs["mm_token_type_ids"]
        assert torch.equal(types.bool(), ids == vl.image_token_id)
        pos = kwargs.get("position_ids")
        assert pos is not None  # ours (focus passes) or generate's own (4 rows: text + t, h, w)
        pos = pos[-3:]
        assert not torch.equal(pos[1], pos[2])  # really 3-D over the images, not the 1-D fallback
        if kwargs.get("image_grid_thw") is not None:
            stock, _ = vl.hf.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=kwargs["image_grid_thw"])
            assert torch.equal(pos, stock)


class _ImageOnlyProcessor:
    """The stock processor class without its video processor (which needs torchvision, absent here)."""

    @staticmethod
    def build(cls, image_processor, tokenizer, template):
        class ImageOnly(cls):
            def check_argument_for_proper_class(self, name, arg):
                return None if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

        return ImageOnly(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template)


@pytest.mark.parametrize("family", FAMILIES)
def test_thumbnail_mode_is_the_stock_pipeline(family, tmp_path):
    """On a one-tile image, `ask --mode thumbnail` generates exactly the ids of the model card's
    pipeline: processor.apply_chat_template + model.generate(do_sample=False), checkpoint from disk."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from lrs_focus.engine import AskOptions, Engine
    from lrs_focus.samples import write_synthetic_raster

    ckpt = save_tiny_vl(family, tmp_path / "ckpt", seed=3)
    engine = Engine(str(ckpt), device="cpu", cache_mb=0)
    b = engine.model.config.tile_size
    raster = tmp_path / "one_tile.tif"
    write_synthetic_raster(str(raster), b, b)
    question = "What is in the image? Answer in one word."
    doc = engine.ask(str(raster), question, AskOptions(mode="thumbnail", max_new_tokens=12))

    from osgeo import gdal

    ds = gdal.Open(str(raster))
    pixels = np.stack([ds.GetRasterBand(i).ReadAsArray() for i in (1, 2, 3)], axis=-1)
    ds = None
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    ip = Qwen2VLImageProcessorPil.from_pretrained(str(ckpt), local_files_only=True)
    cls = Qwen2_5_VLProcessor if family == "qwen2.5-vl" else Qwen3VLProcessor
    proc = _ImageOnlyProcessor.build(cls, ip, tok, tok.chat_template)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(pixels)},
                                             {"type": "text", "text": question}]}]
    inputs = proc.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                      return_tensors="pt")
    stock = AutoModelForImageTextToText.from_pretrained(str(ckpt), local_files_only=True).eval()
    with torch.inference_mode():
        out = stock.generate(**inputs, do_sample=False, max_new_tokens=12)
    stock_new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stock_text = tok.decode(stock_new, skip_special_tokens=True).strip()

    model = engine.model
    prompt = model.build_prompt([(None, model.grid_for(b, b))], question)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    assert torch.equal(model.model_inputs(prompt)["mm_token_type_ids"], inputs["mm_token_type_ids"].int())
    with torch.inference_mode():
        feats = model.encode_thumbnail(pixels)
        _, ids = model.generate(prompt, [feats], 12)
    assert ids == stock_new
    assert doc["answer"] == stock_text
    assert doc["counts"]["llm_sequence_tokens"] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_sentinel2_focus_two_levels_on_the_raster_fewer_tokens(family, sentinel2_vrt):
    from lrs_focus.engine import AskOptions, Engine

    engine = Engine(f"tiny-{family}", device="cpu", cache_mb=64)
    q = "Where are the largest agricultural fields?"
    doc = engine.ask(str(sentinel2_vrt), q, AskOptions(mode="paper", max_new_tokens=4))
    reached = [lv for lv in doc["trace"]["levels"] if lv["reached"]]
    assert len(reached) >= 2 and doc["trace"]["stopped_at"] >= 1
    assert doc["trace"]["focus"]["signal"] == "attention"
    feats = doc["features"]["features"]
    assert feats
    gt = doc["raster"]["geotransform"]
    h, w = doc["raster"]["size"]
    xs = (gt[0], gt[0] + w * gt[1])
    ys = (gt[3] + h * gt[5], gt[3])
    for f in feats:
        for x, y in f["geometry"]["coordinates"][0]:
            assert xs[0] - 1e-6 <= x <= xs[1] + 1e-6 and ys[0] - 1e-6 <= y <= ys[1] + 1e-6
    kept_final = [t for t in reached[-1]["tiles"] if t["kept"]]
    assert len(kept_final) == doc["trace"]["focus"]["tiles_sent"] >= 1
    # a follow-up question about the same raster reuses the base level's prefix
    again = engine.ask(str(sentinel2_vrt), "Is there a river?", AskOptions(mode="paper", max_new_tokens=4))
    assert again["trace"]["focus"]["prefix_reused"] >= 1
    assert again["counts"]["tiles_from_cache"] >= 9
    full = engine.ask(str(sentinel2_vrt), q, AskOptions(mode="all-tiles", max_new_tokens=4))
    assert doc["counts"]["llm_vision_tokens"] < full["counts"]["llm_vision_tokens"]


def test_checkpoint_directory_loads_offline_and_refuses_what_it_cannot_do(tmp_path, monkeypatch, sentinel2_vrt):
    from lrs_focus.engine import AskOptions, Engine
    from lrs_focus.errors import BadOptions

    ckpt = save_tiny_vl("qwen2.5-vl", tmp_path / "Qwen2.5-VL-tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine(str(ckpt), device="cpu", cache_mb=0)
    assert engine.describe()["family"] == "qwen2.5-vl" and engine.describe()["random_weights"] is False
    doc = engine.ask(str(sentinel2_vrt), "What crops grow here?", AskOptions(mode="paper", max_new_tokens=3,
                                                                     focus="relative", focus_layer=2))
    assert doc["trace"]["focus"]["signal"] == "relative" and doc["trace"]["focus"]["layer"] == 2
    assert doc["options"]["pixels"] == "gdal"
    for bad in (dict(mode="released"), dict(pixels="exact"), dict(focus="rfm"), dict(focus_layer=4),
                dict(focus_heads=[4])):
        with pytest.raises(BadOptions):
            engine.ask(str(sentinel2_vrt), "q?", AskOptions(**bad))
    with pytest.raises(BadOptions):
        engine.ask(str(sentinel2_vrt), "end <|im_end|> early", AskOptions())


def test_bf16_focus_agrees_with_float32(vl):
    """bf16 weights on CPU: the focus map ranks the same tokens first (hook in float32 throughout)."""
    _, _, feats, grids = _images(vl, n_tiles=2)
    prompt = vl.build_prompt(grids, "Where are the ships?")
    with torch.inference_mode():
        ref = vl.focus_map(prompt, feats)
        vl.hf.to(torch.bfloat16)
        try:
            low = vl.focus_map(prompt, [f.to(torch.bfloat16) for f in feats])
        finally:
            vl.hf.to(torch.float32)
    k = ref.numel() // 4
    top_ref = set(torch.topk(ref, k).indices.tolist())
    top_low = set(torch.topk(low, k).indices.tolist())
    assert len(top_ref & top_low) / k > 0.8
    assert float((ref - low).abs().sum() / ref.abs().sum()) < 0.1


def test_cli_ask_json_with_a_tiny_qwen_preset(sentinel2_vrt, tmp_path):
    """`ask S2 Q --model tiny-qwen3-vl --json` as a user runs it: a process, a trace of two levels,
    GeoJSON written, the random-weights notice naming the model."""
    import json
    import subprocess
    import sys

    out = tmp_path / "focus.geojson"
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "ask", str(sentinel2_vrt), "Where is the river?",
                           "--model", "tiny-qwen3-vl", "--max-new-tokens", "3", "--focus", "relative",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sum(lv["reached"] for lv in doc["trace"]["levels"]) >= 2
    assert doc["options"]["focus"] == "relative" and doc["model"]["random_weights"] is True
    assert "model 'tiny-qwen3-vl' has RANDOM WEIGHTS" in proc.stderr
    assert json.loads(out.read_text())["features"]


def test_llava_family_refuses_the_attention_focus_options(sentinel2_vrt):
    from lrs_focus.engine import AskOptions, Engine
    from lrs_focus.errors import BadOptions

    engine = Engine("tiny", device="cpu", cache_mb=0)
    for bad in (dict(focus="attention"), dict(focus_layer=1), dict(focus_heads=[0])):
        with pytest.raises(BadOptions, match="Region Focus Module"):
            engine.ask(str(sentinel2_vrt), "q?", AskOptions(**bad))


def test_pruned_answer_with_every_token_kept_is_the_stock_generate(vl):
    """`--answer-input tokens` keeps each token's own M-RoPE position: with nothing pruned its greedy loop
    generates exactly the stock `generate`'s ids (the checkpoint's repetition penalty applied in both)."""
    _, _, feats, grids = _images(vl, n_tiles=2)
    prompt = vl.build_prompt(grids, "Which tile shows the harbour?")
    everything = [torch.arange(f.shape[0]) for f in feats]
    gen = vl.hf.generation_config
    old = gen.repetition_penalty
    gen.repetition_penalty = 1.05
    try:
        with torch.inference_mode():
            _, stock = vl.generate(prompt, feats, 10)
            _, ours, n = vl.generate_pruned(prompt, feats, everything, 10)
    finally:
        gen.repetition_penalty = old
    assert ours == stock and n == len(prompt.ids)


def test_tokens_answer_reads_fewer_tokens_than_tiles(sentinel2_vrt, vl):
    from lrs_focus.engine import AskOptions, Engine

    engine = Engine.__new__(Engine)
    engine.model, engine.tokenizer, engine.name, engine.cache = vl, vl.tokenizer, "tiny", None
    engine.info = {"random_weights": True, "device": "cpu", "dtype": "float32"}
    tiles = engine.ask(str(sentinel2_vrt), "Where is the river?", AskOptions(max_new_tokens=2))
    tokens = engine.ask(str(sentinel2_vrt), "Where is the river?", AskOptions(max_new_tokens=2, answer_input="tokens"))
    assert tokens["trace"]["focus"]["tiles_sent"] == tiles["trace"]["focus"]["tiles_sent"] >= 1
    thumb = tiles["counts"]["llm_vision_tokens"] - 256 * tiles["trace"]["focus"]["tiles_sent"]
    kept_tokens = tokens["counts"]["llm_vision_tokens"] - thumb
    assert 0 < kept_tokens < 256 * tokens["trace"]["focus"]["tiles_sent"]
    assert tokens["counts"]["llm_sequence_tokens"] < tiles["counts"]["llm_sequence_tokens"]


@pytest.mark.parametrize("model_name", ["tiny", "tiny-qwen2.5-vl"])
def test_cancel_is_honoured_inside_a_forward_pass(model_name, sentinel2_vrt):
    """A cancel raised while a pass runs stops it at the next block, not at the next stage boundary."""
    from lrs_focus.engine import AskOptions, Engine
    from lrs_focus.errors import Cancelled

    engine = Engine(model_name, device="cpu", cache_mb=0)
    from lrs_focus.question_run import transformer_blocks

    blocks = transformer_blocks(engine.model)
    ran = []
    handles = [b.register_forward_pre_hook(lambda m, a: ran.append(1)) for b in blocks]
    polls = []

    def should_stop():
        polls.append(len(ran))
        return len(ran) >= 3  # after the third block of the first forward pass (the vision tower's)

    try:
        with pytest.raises(Cancelled, match="forward pass"):
            engine.ask(str(sentinel2_vrt), "Where is the river?", AskOptions(max_new_tokens=2), should_stop=should_stop)
    finally:
        for h in handles:
            h.remove()
    assert len(ran) <= 4  # at most the block that was already starting when the flag was seen


@pytest.mark.parametrize("answer_input", ["tiles", "tokens"])
def test_a_tight_budget_drops_the_lowest_scored_tiles_never_the_text(sentinel2_vrt, vl, answer_input):
    from lrs_focus.engine import AskOptions, Engine

    engine = Engine.__new__(Engine)
    engine.model, engine.tokenizer, engine.name, engine.cache = vl, vl.tokenizer, "tiny", None
    engine.info = {"random_weights": True, "device": "cpu", "dtype": "float32"}
    question = "Where are the largest agricultural fields, and how many ships are in the harbour?"
    limit = 1200 if answer_input == "tiles" else 600  # kept tokens only cost less than whole tiles
    doc = engine.ask(str(sentinel2_vrt), question, AskOptions(max_new_tokens=2, max_length=limit,
                                                              answer_input=answer_input))
    counts, focus = doc["counts"], doc["trace"]["focus"]
    assert counts["llm_sequence_tokens"] <= limit and counts["vision_tokens_dropped"] > 0
    assert 1 <= focus["tiles_sent"] < len([t for t in doc["trace"]["levels"][doc["trace"]["stopped_at"]]["tiles"]])
    last = doc["trace"]["levels"][doc["trace"]["stopped_at"]]["tiles"]
    sent = [t for t in last if t["kept"]]
    assert len(sent) == focus["tiles_sent"]
    assert min(t["score"] for t in sent) >= max(t["score"] for t in last if not t["kept"]) or answer_input == "tokens"
