"""GPU check at real scale: the Qwen2-7B geometry with random weights in bf16, a 27k-pixel raster.

`--preset qwen2.5-vl-7b|qwen3-vl-8b` runs the same raster through a stock Qwen2.5-VL-7B / Qwen3-VL-8B
built from its real config shapes with random weights (attention focus, thumbnail + kept tiles);
the bf16-vs-float32 check then compares the focus map of the base level instead of the RFM's.

No download and no GDAL: the model is built from the released shapes (Qwen2-7B + CLIP-L/14-336 +
a 5-layer RFM) with random weights directly on the GPU in bf16, and the 27,328 x 20,000 raster is
computed in memory and read through the engine's exact pixel path; the question runs through
`answer.run_question`, the engine's own code. Prints, for paper mode and all-tiles (capped):
seconds per stage, peak GPU memory, tokens; then the RFM's bf16-vs-float32 agreement on the base
level. `scripts/gpu_check.sh` runs it; `--preset tiny --device cpu` is its smoke test here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

QUESTION = "How many ships are docked at the northern pier?"


class SyntheticRaster:
    """A raster computed on demand (fields, roads, a bright target): any size, no file, no GDAL."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def read_rgb(self, window, out_size=None, pad_rgb=(0, 0, 0)):
        """Full resolution, or sampled at pixel centres when `out_size` (h, w) asks for a reduction
        (the GDAL path's reads: never a 27k grid in memory)."""
        x0, y0, x1, y1 = window
        if out_size is None:
            yy, xx = np.mgrid[int(y0):int(y1), int(x0):int(x1)].astype(np.int32)
        else:
            oh, ow = out_size
            ys = (y0 + (np.arange(oh) + 0.5) * (y1 - y0) / oh).astype(np.int32)
            xs = (x0 + (np.arange(ow) + 0.5) * (x1 - x0) / ow).astype(np.int32)
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
        field = ((xx // 700 + yy // 500) % 5) * 40
        road = ((xx % 1500 < 20) | (yy % 1300 < 20)) * 120
        target = ((np.abs(xx - int(0.37 * self.width)) < 60) & (np.abs(yy - int(0.61 * self.height)) < 60)) * 200
        r = np.clip(field + road + target, 0, 255)
        g = np.clip(field // 2 + road + 60, 0, 255)
        b = np.clip((xx ^ yy) % 64 + road, 0, 255)
        return np.stack([r, g, b], axis=-1).astype(np.uint8)


VL_PRESETS = {  # the hub checkpoints' config shapes (no download)
    "qwen2.5-vl-7b": ("qwen2.5-vl", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                          "mrope_section": [16, 24, 24]}),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31])),
    "qwen3-vl-8b": ("qwen3-vl", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                     rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                      "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
                    dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                         patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                         deepstack_visual_indexes=[8, 16, 24])),
}


def build_vl(preset: str, device: str, dtype: torch.dtype):
    """A stock Qwen-VL at real shapes (random weights, made on the device in `dtype`) or a tiny preset."""
    from lrs_focus.model.loading import load_model
    from lrs_focus.model.qwen_vl import QwenVLFocusModel
    from lrs_focus.model.qwen_vl_loading import focus_config, qwen2_tokenizer, tiny_vl_parts

    if preset.startswith("tiny-"):
        model, tokenizer, info = load_model(preset, device=device, dtype=dtype)
    else:
        family, text, vision = VL_PRESETS[preset]
        tokenizer = qwen2_tokenizer()
        _, processor, template = tiny_vl_parts(family, tokenizer)  # the family's processor and template
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

        cfg_cls, cls = ((Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration) if family == "qwen2.5-vl"
                        else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                               "<|vision_end|>", "<|im_end|>")}
        config = cfg_cls(text_config=dict(text, max_position_embeddings=128000, rms_norm_eps=1e-6,
                                          eos_token_id=ids["<|im_end|>"]),
                         vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        for c in (config, config.text_config, config.vision_config):
            c._attn_implementation = "sdpa"
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                torch.manual_seed(0)
                hf = cls(config).eval()
        finally:
            torch.set_default_dtype(previous)
        model = QwenVLFocusModel(hf, tokenizer, processor, focus_config(family, hf, processor, template))
    return SimpleNamespace(model=model, tokenizer=model.tokenizer, cache=None, name=f"{preset}-random",
                           info={"device": device, "dtype": str(dtype).replace("torch.", ""), "random_weights": True,
                                 "attention": "sdpa"})


def build_model(preset: str, device: str, dtype: torch.dtype, attention: str = "auto"):
    if preset in VL_PRESETS or preset.startswith("tiny-qwen"):
        return build_vl(preset, device, dtype)
    from transformers import CLIPVisionConfig, Qwen2Config

    from lrs_focus.model.config import LrsFocusConfig
    from lrs_focus.model.modeling import LrsFocusModel
    from lrs_focus.model.prompts import separator_id
    from lrs_focus.model.tiny import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    if preset == "7b":
        text = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                           rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
                           eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        for c in (text, vision):
            c._attn_implementation = "sdpa"
        config = LrsFocusConfig("qwen2", text, vision)
    else:
        config = tiny_config("qwen2", vocab_size=len(tokenizer), tokenizer=tokenizer)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16 on the device: 18 GB, not 36
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LrsFocusModel(config)
    finally:
        torch.set_default_dtype(previous)
    model.separator_token_id = separator_id(tokenizer)
    model.eval()
    if attention == "auto":  # what `load_model` picks: flash-attn only in fp16/bf16 on CUDA, when installed
        from lrs_focus.model.loading import choose_attention

        attention = choose_attention(device, dtype)
    model.set_attention(attention)  # the RFM stays on sdpa whatever is asked (released scoring)
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32, "rotary tables must stay float32"
    assert model._pixel_mean.dtype == torch.float32
    engine = SimpleNamespace(model=model, tokenizer=tokenizer, cache=None, name=f"qwen2-{preset}-random",
                             info={"device": device, "dtype": str(dtype).replace("torch.", ""), "random_weights": True,
                                   "attention": attention})
    return engine


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gb(nbytes: float) -> float:
    return round(nbytes / 2**30, 2)


def ask(engine, raster, mode: str, device: str, max_new_tokens: int) -> dict:
    from lrs_focus.answer import pyramid_config, result_counts, run_question
    from lrs_focus.question_run import is_vl
    from lrs_focus.engine import AskOptions
    from lrs_focus.exact_pixels import ExactPyramid

    options = AskOptions(mode=mode, max_new_tokens=max_new_tokens).validate()
    make = SyntheticPyramid if is_vl(engine.model) else ExactPyramid
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    t0 = time.perf_counter()
    pyramid = make(raster, pyramid_config(engine.model))
    run = run_question(engine, pyramid, QUESTION, options, lambda *a: None, None)
    _sync(device)
    total = time.perf_counter() - t0
    counts = result_counts(engine.model.config, run)
    doc = {
        "mode": mode,
        "seconds": {k: round(v, 3) for k, v in {**run.timings, "total": total}.items()},
        "tokens": {k: counts[k] for k in ("tiles_encoded", "llm_vision_tokens", "llm_sequence_tokens",
                                          "vision_tokens_dropped", "rfm_passes")},
        "tiles_per_level": [len(r.encoded) for r in run.result.records],
        "stopped_at": run.result.stopped_at,
        "notes": run.result.notes,
    }
    if device.startswith("cuda"):
        doc["gpu_gb"] = {"weights": _gb(before), "peak": _gb(torch.cuda.max_memory_allocated()),
                         "peak_above_weights": _gb(torch.cuda.max_memory_allocated() - before)}
    return doc


class SyntheticPyramid:
    """The GDAL pixel path's pyramid on the synthetic raster, without GDAL (thumbnail sampled)."""

    def __new__(cls, raster, cfg):
        from lrs_focus.pyramid import ImagePyramid

        class _Pyramid(ImagePyramid):
            def thumbnail(self):
                th, tw = self.geometry.thumbnail_size
                out = self._blank()
                out[:th, :tw] = self.src.read_rgb((0, 0, self.src.width, self.src.height), (th, tw))
                return out

        return _Pyramid(raster, cfg)


def base_canvas(model, pyramid):
    """(thumbnail features, every base tile's canvas) through the engine's encoder (no cache)."""
    from lrs_focus.features import TileEncoder
    from lrs_focus.focus import build_canvas

    geo = pyramid.geometry
    encoder = TileEncoder(model, pyramid, None, None, lambda *a: None)
    thumb = encoder.thumbnail()
    base = geo.levels[0]
    tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
    return thumb, build_canvas(geo, 0, tiles, encoder, all_newlines=False, keep_gaps=False)


def agreement(low: np.ndarray, high: np.ndarray) -> dict:
    """Two score vectors of the same tokens: total variation (as distributions), top-25 % overlap, max |diff|."""
    k = max(1, low.size // 4)
    top = len(set(np.argsort(-low)[:k]) & set(np.argsort(-high)[:k])) / k
    tv = 0.5 * np.abs(low / low.sum() - high / high.sum()).sum()
    return {"tokens": int(low.size), "total_variation": round(float(tv), 5), "top25_overlap": round(top, 4),
            "max_abs_diff": float(np.abs(low - high).max())}


def focus_agreement(engine, raster) -> dict:
    """The base level's focus map in the model's dtype vs the same model in float32, same inputs."""
    from lrs_focus.answer import pyramid_config
    from lrs_focus.vl_answer import AttentionScorer

    model = engine.model
    pyramid = SyntheticPyramid(raster, pyramid_config(model))
    geo = pyramid.geometry
    with torch.inference_mode():
        thumb, canvas = base_canvas(model, pyramid)
        grid = model.grid_for(*geo.thumbnail_size)
        low = AttentionScorer(model, QUESTION, thumb, grid, geo, False, None, None)(canvas)
        dtype = model.dtype
        model.hf.float()
        try:
            canvas.feats = canvas.feats.float()
            high = AttentionScorer(model, QUESTION, thumb.float(), grid, geo, False, None, None)(canvas)
        finally:
            model.hf.to(dtype)
    tok = ~canvas.is_newline
    return agreement(low[tok], high[tok])


def rfm_agreement(engine, raster) -> dict:
    """RFM scores of the base level in the model's dtype vs a float32 copy of the RFM, same inputs."""
    from lrs_focus.answer import pyramid_config
    from lrs_focus.llava_answer import RfmScorer
    from lrs_focus.exact_pixels import ExactPyramid
    from lrs_focus.model.prompts import encode_prompt

    model = engine.model
    pyramid = ExactPyramid(raster, pyramid_config(model))
    prompt = encode_prompt(engine.tokenizer, model.config.template, QUESTION)
    with torch.inference_mode():
        thumb, canvas = base_canvas(model, pyramid)
        low = RfmScorer(model, prompt, thumb)(canvas)
        seq = model.build_sequence(prompt, thumb, canvas.gather(model.image_newline))
        rfm32 = copy.deepcopy(model.rfm).float()
        keys = torch.arange(seq.tiles.start, seq.tiles.stop, device=seq.embeds.device)
        high = rfm32.score(seq.embeds.float(), seq.position_ids, seq.query_index, keys).float().cpu().numpy()
        del rfm32
    return agreement(low, high)  # RFM scores are a softmax over the tile tokens: normalising changes nothing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["7b", "tiny", *VL_PRESETS, "tiny-qwen2.5-vl", "tiny-qwen3-vl"],
                        default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="27328x20000", help="WIDTHxHEIGHT of the synthetic raster")
    parser.add_argument("--modes", default="paper,all-tiles")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--attention", choices=["auto", "sdpa", "flash_attention_2"], default="auto",
                        help="LLM and vision tower kernel (auto: flash-attn in bf16 on CUDA when installed); "
                             "the RFM always runs sdpa")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    w, h = (int(v) for v in args.size.lower().split("x"))
    doc = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "preset": args.preset, "dtype": str(dtype), "raster": [h, w]}
    t0 = time.perf_counter()
    engine = build_model(args.preset, args.device, dtype, args.attention)
    _sync(args.device)
    from lrs_focus.stage_clock import StageClock

    doc["attention"] = engine.info.get("attention", "sdpa")
    doc["timings_synchronised"] = StageClock(args.device).cuda  # stage edges wait for the device
    doc["build_seconds"] = round(time.perf_counter() - t0, 1)
    raster = SyntheticRaster(h, w)
    doc["runs"] = [ask(engine, raster, m.strip(), args.device, args.max_new_tokens) for m in args.modes.split(",")]
    from lrs_focus.question_run import is_vl

    if is_vl(engine.model):
        doc["focus_bf16_vs_float32"] = focus_agreement(engine, raster)
    else:
        doc["rfm_bf16_vs_float32"] = rfm_agreement(engine, raster)
    print(json.dumps(doc, indent=1))
    for run in doc["runs"]:
        print(f"{run['mode']:>10}: {run['seconds']['total']:.1f} s, per stage ({doc['attention']}, "
              f"{'synchronised' if doc['timings_synchronised'] else 'host clock'}) {run['seconds']} "
              f"tokens {run['tokens']} GPU {run.get('gpu_gb')}", file=sys.stderr)
    for key in ("rfm_bf16_vs_float32", "focus_bf16_vs_float32"):
        if key in doc:
            print(f"{key}: {doc[key]}", file=sys.stderr)
    try:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
