"""Stock Qwen2.5-VL / Qwen3-VL checkpoints behind the method's seam: training-free focus.

The model is the transformers class as loaded from the checkpoint (`...ForConditionalGeneration`);
this file only decides what goes into it and reads one attention row out of it:

    encode     each tile (16 x 16 LLM tokens: 448 px for Qwen2.5-VL, 512 px for Qwen3-VL) and the
               thumbnail are their own image, through the checkpoint's image processor (its
               normalisation, resize rule and patch order) and `get_image_features`. Features are
               (T, T, d) per tile; Qwen3-VL's deepstack features are concatenated on the last axis
               (d * (1 + n_deepstack)) so that the feature cache and the canvas gather stay family-blind.
    prompt     the checkpoint's own chat template: [thumbnail][caption, tile]... [question]. Images come
               before the question, so everything up to the question is question-independent.
    focus      attention of the last prompt token to the tile tokens at layer `focus_layer` (heads
               averaged, or `focus_heads`). A hook on that layer recomputes one query row against the
               layer's cached keys and stops the forward there: no attention matrix is materialised
               (the model keeps sdpa/flash) and no layer above it runs. The prefix (everything but the
               question) runs once into a KV cache; a question then runs only its own tokens.
               `relative` divides by the map of a generic prompt over the same prefix (ViCrop rel_att).
    answer     the stock `generate` on [thumbnail][caption, kept tile]...[question], with the cached
               features passed as `mm_encoder_outputs` and `mm_token_type_ids` always given
               (Qwen2.5-VL silently falls back to 1-D positions without it).

Positions are M-RoPE from the model's own `get_rope_index`, computed once per prompt and passed
explicitly, so that prefix and suffix passes see exactly the positions of one full pass.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

#: config.json `model_type` -> family name used on the command line and in results
MODEL_TYPES = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}
VL_FAMILIES = tuple(MODEL_TYPES.values())
TOKENS_PER_TILE = 16  # a tile is 16 x 16 LLM tokens of the model
GENERIC_PROMPT = "Write a general description of the image."  # ViCrop's rel_att reference prompt
FOCUS_MODES = ("attention", "relative")


def default_focus_layer(family: str, num_layers: int) -> int:
    """The layer whose last-token attention is the focus signal, when none is asked.

    Real checkpoints: SD-RPN found Qwen2.5-VL-7B's grounding heads in layers 22-23 of 28 and the
    3B's in 20-22 of 36, i.e. about 0.6-0.8 of the depth; we take round(0.75 * layers) (21 of 28,
    27 of 36 for Qwen3-VL-8B, for which no published figure exists: measure with `--focus-layer`).
    Toy models (<= 8 layers) use their middle layer. docs/models.md keeps the figures.
    """
    if num_layers <= 8:
        return max(0, num_layers // 2 - 1)
    return min(num_layers - 1, int(round(0.75 * num_layers)))


@dataclass
class VLFocusConfig:
    """What the pyramid, the budget and the counters need to know of a Qwen-VL checkpoint."""

    family: str
    text_config: Any
    token_px: int  # pixels per LLM token side: patch * merge (28 / 32)
    focus_layer: int
    focus_heads: list[int] | None = None
    n_max: int = 24  # tiles per zoom step (each 256 tokens in the focus pass)
    max_length: int = 8192
    encode_batch: int = 8
    pad_rgb: tuple[int, int, int] = (0, 0, 0)
    template: str | None = None  # the checkpoint's chat template (jinja)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_tile(self) -> int:
        return TOKENS_PER_TILE

    @property
    def tile_size(self) -> int:
        return TOKENS_PER_TILE * self.token_px

    @property
    def base_long_side(self) -> int:
        return 3 * self.tile_size  # three tiles, as the released pyramid's 1008 for 336

    @property
    def thumbnail_tokens(self) -> int:
        """Upper bound of the thumbnail's tokens (its long side is one tile)."""
        return TOKENS_PER_TILE * TOKENS_PER_TILE

    @property
    def vit_tokens_per_tile(self) -> int:
        """Vision-tower patches of one tile (before the 2 x 2 merge)."""
        return 4 * TOKENS_PER_TILE * TOKENS_PER_TILE

    @property
    def rfm_layers(self) -> int:
        """Layers a focus pass runs (the counters' 'rfm' passes are focus passes here)."""
        return self.focus_layer + 1

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)


class _StopForward(Exception):
    """Raised by the focus hook once layer L's keys are cached: the layers above never run."""


@dataclass
class Prompt:
    """One rendered prompt: ids, image grids, and where each image's tokens start."""

    ids: list[int]
    images: list[tuple[str | None, tuple[int, int, int]]]  # (caption or None, (t, h, w) grid) per image
    image_starts: list[int]
    prefix_length: int  # tokens before the question (question-independent part)


class QwenVLFocusModel:
    """A loaded Qwen2.5-VL / Qwen3-VL checkpoint seen through the method's seam."""

    keeps_thumbnail_aspect = True  # the thumbnail is the view resized, not padded to a square

    def __init__(self, hf_model: Any, tokenizer: Any, image_processor: Any, config: VLFocusConfig):
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        hf_cfg = hf_model.config
        self.image_token_id = int(hf_cfg.image_token_id)
        self.deepstack = len(getattr(hf_cfg.vision_config, "deepstack_visual_indexes", None) or [])
        self.hidden = int(hf_cfg.text_config.hidden_size)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def layers(self) -> Any:
        return self.hf.model.language_model.layers

    def eval(self) -> "QwenVLFocusModel":
        self.hf.eval()
        return self

    # -- (a) vision ------------------------------------------------------------------------------
    def grid_for(self, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) patch grid the image processor makes of an image of this size."""
        ip = self.image_processor
        module = sys.modules[type(ip).__module__]
        size = getattr(ip, "size", None) or {}
        min_px = size.get("shortest_edge", getattr(ip, "min_pixels", 56 * 56))
        max_px = size.get("longest_edge", getattr(ip, "max_pixels", 28 * 28 * 1280))
        factor = int(ip.patch_size) * int(ip.merge_size)
        h, w = module.smart_resize(int(height), int(width), factor=factor, min_pixels=min_px, max_pixels=max_px)
        return (1, h // int(ip.patch_size), w // int(ip.patch_size))

    def _features(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Images (h, w, 3) uint8 -> per image (tokens, d') features (deepstack concatenated)."""
        from PIL import Image

        pil = [Image.fromarray(np.ascontiguousarray(im)) for im in images]
        batch = self.image_processor(images=pil, return_tensors="pt")
        pv = batch["pixel_values"].to(self.device)
        grid = batch["image_grid_thw"].to(self.device)
        out = self.hf.model.get_image_features(pv, grid, return_dict=True)
        feats = list(out.pooler_output)
        if self.deepstack:
            stacks = getattr(out, "deepstack_features", None) or []
            feats = [torch.cat([f, *(s[i] for s in stacks)], dim=-1) for i, f in enumerate(feats)]
        return feats

    def encode_tiles(self, images: np.ndarray) -> torch.Tensor:
        """(N, B, B, 3) uint8 tiles -> (N, T, T, d') in raster order of each tile's tokens."""
        feats = self._features(list(images))
        t = TOKENS_PER_TILE
        return torch.stack([f.view(t, t, -1) for f in feats])

    def encode_thumbnail(self, image: np.ndarray) -> torch.Tensor:
        """The thumbnail (h, w, 3) uint8, aspect kept -> (tokens, d')."""
        return self._features([image])[0]

    def split_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(n, d') -> main (n, d) and the deepstack parts [(n, d)] * n_deepstack."""
        d = self.hidden
        return feats[..., :d], [feats[..., d * (k + 1): d * (k + 2)] for k in range(self.deepstack)]

    # -- (b) prompts -----------------------------------------------------------------------------
    def _render(self, content: list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.config.template, tokenize=False,
                                                  add_generation_prompt=True)

    def _image_pad(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    def build_prompt(self, images: list[tuple[str | None, tuple[int, int, int]]], question: str) -> Prompt:
        """Render [caption?, image]... + question with the chat template and expand each image's pad
        token to its token count, as the stock processor does. `images`: (caption or None, grid)."""
        content: list[dict[str, Any]] = []
        for caption, _ in images:
            if caption:
                content.append({"type": "text", "text": caption})
            content.append({"type": "image"})
        marker = "\x00QUESTION\x00"
        content.append({"type": "text", "text": marker})
        text = self._render(content)
        if text.count(marker) != 1:
            raise ValueError("the chat template did not place the question once")
        before, after = text.split(marker)
        pad = self._image_pad()
        merge = int(self.image_processor.merge_size) ** 2
        pieces = before.split(pad)
        if len(pieces) != len(images) + 1:
            raise ValueError(f"the chat template rendered {len(pieces) - 1} image(s) for {len(images)}")
        ids: list[int] = []
        starts: list[int] = []
        for k, piece in enumerate(pieces):
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if k < len(images):
                t, h, w = images[k][1]
                starts.append(len(ids))
                ids += [self.image_token_id] * (t * h * w // merge)
        prefix_length = len(ids)
        ids += self.tokenizer(question + after, add_special_tokens=False)["input_ids"]
        return Prompt(ids, list(images), starts, prefix_length)

    def model_inputs(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        """input_ids, mm_token_type_ids (always: see the module docstring), image_grid_thw and the
        M-RoPE position ids of the whole prompt."""
        ids = torch.tensor([prompt.ids], dtype=torch.long, device=self.device)
        types = (ids == self.image_token_id).to(torch.int)
        grids = [g for _, g in prompt.images]
        grid = torch.tensor(grids, dtype=torch.long, device=self.device) if grids else None
        if grid is not None:
            pos, _ = self.hf.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid)
        else:
            pos = torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
        return {"input_ids": ids, "mm_token_type_ids": types, "image_grid_thw": grid, "position_ids": pos}

    def encoder_outputs(self, feats: list[torch.Tensor]) -> dict[str, Any]:
        """Cached per-image features as the stock forward's `mm_encoder_outputs`."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        mains, stacks = zip(*(self.split_features(f.to(self.device, self.dtype)) for f in feats))
        out = BaseModelOutputWithPooling(pooler_output=tuple(mains))
        if self.deepstack:
            out["deepstack_features"] = [tuple(s[k] for s in stacks) for k in range(self.deepstack)]
        return {"image": out}

    # -- (c) focus ---------------------------------------------------------------------------------
    def _layer(self, layer: int | None) -> int:
        index = self.config.focus_layer if layer is None else int(layer)
        if not 0 <= index < self.config.num_layers:
            raise ValueError(f"focus layer {index} outside 0..{self.config.num_layers - 1}")
        return index

    def _run_prefix(self, inputs: dict[str, torch.Tensor], feats: list[torch.Tensor], n: int,
                    layer: int | None = None) -> Any:
        """Run the first n prompt tokens (every image) through layers 0..L into a fresh KV cache."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.hf.config.text_config)
        attn = self.layers[self._layer(layer)].self_attn
        handle = attn.register_forward_hook(_raise_stop)
        try:
            self.hf.model(input_ids=inputs["input_ids"][:, :n], mm_token_type_ids=inputs["mm_token_type_ids"][:, :n],
                          image_grid_thw=inputs["image_grid_thw"], position_ids=inputs["position_ids"][..., :n],
                          mm_encoder_outputs=self.encoder_outputs(feats) if feats else None, cache=cache,
                          use_cache=True)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return cache

    def attention_row(self, ids: torch.Tensor, position_ids: torch.Tensor, cache: Any,
                      heads: Sequence[int] | None = None, layer: int | None = None) -> torch.Tensor:
        """Attention (float32, over every cached + new key) of the last of `ids` at the focus layer,
        heads averaged (or `heads`), continuing `cache` (which it extends: cut it back after)."""
        attn = self.layers[self._layer(layer)].self_attn
        row: dict[str, torch.Tensor] = {}

        def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            keys = kwargs["cache"].layers[module.layer_idx].keys
            row["p"] = last_token_attention(module, hidden[:, -1:], kwargs["position_embeddings"], keys)
            raise _StopForward

        handle = attn.register_forward_hook(hook, with_kwargs=True)
        try:
            self.hf.model(input_ids=ids, mm_token_type_ids=torch.zeros_like(ids, dtype=torch.int),
                          position_ids=position_ids, cache=cache, use_cache=True)
        except _StopForward:
            pass
        finally:
            handle.remove()
        probs = row["p"]  # (heads, n_keys)
        if heads:
            bad = [h for h in heads if not 0 <= int(h) < probs.shape[0]]
            if bad:
                raise ValueError(f"focus heads {bad} outside 0..{probs.shape[0] - 1}")
            probs = probs[list(heads)]
        return probs.mean(dim=0)

    def focus_map(self, prompt: Prompt, feats: list[torch.Tensor], relative: bool = False,
                  prefix: "PrefixCache | None" = None, layer: int | None = None,
                  heads: Sequence[int] | None = None) -> torch.Tensor:
        """Focus scores over the prompt's image tokens (float32, concatenated in image order).

        `prefix`: a PrefixCache of the same images and layer (reused, left as found); a fresh one
        otherwise. `layer`/`heads`: the focus layer and heads (default: the config's)."""
        inputs = self.model_inputs(prompt)
        n = prompt.prefix_length
        heads = self.config.focus_heads if heads is None else heads
        cache = prefix.cache if prefix is not None else self._run_prefix(inputs, feats, n, layer)
        image_pos = torch.nonzero(inputs["mm_token_type_ids"][0, :n], as_tuple=False)[:, 0]
        try:
            row = self.attention_row(inputs["input_ids"][:, n:], inputs["position_ids"][..., n:], cache, heads, layer)
            _truncate(cache, n)
            scores = row[image_pos]
            if relative:
                ref = self.build_prompt(prompt.images, GENERIC_PROMPT)  # same prefix, generic question
                ref_in = self.model_inputs(ref)
                ref_row = self.attention_row(ref_in["input_ids"][:, n:], ref_in["position_ids"][..., n:], cache,
                                             heads, layer)
                scores = scores / ref_row[image_pos].clamp_min(1e-12)
        finally:
            _truncate(cache, n)
        return scores

    def prefix_cache(self, prompt: Prompt, feats: list[torch.Tensor], layer: int | None = None) -> "PrefixCache":
        inputs = self.model_inputs(prompt)
        return PrefixCache(self._run_prefix(inputs, feats, prompt.prefix_length, layer), prompt.prefix_length)

    # -- (d) the answer ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: Prompt, feats: list[torch.Tensor], max_new_tokens: int,
                 should_stop: Callable[[], bool] | None = None) -> tuple[str, list[int]]:
        """The stock `generate` (greedy, the checkpoint's generation config otherwise) on the prompt."""
        from transformers import StoppingCriteriaList

        from .modeling import _PollStop

        inputs = self.model_inputs(prompt)
        kwargs: dict[str, Any] = {}
        if feats:
            kwargs = {"mm_encoder_outputs": self.encoder_outputs(feats), "image_grid_thw": inputs["image_grid_thw"]}
        criteria = StoppingCriteriaList([_PollStop(should_stop)]) if should_stop is not None else None
        out = self.hf.generate(input_ids=inputs["input_ids"], attention_mask=torch.ones_like(inputs["input_ids"]),
                               mm_token_type_ids=inputs["mm_token_type_ids"], max_new_tokens=int(max_new_tokens),
                               do_sample=False, num_beams=1, stopping_criteria=criteria, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        return self.tokenizer.decode(new, skip_special_tokens=True).strip(), new


    @torch.no_grad()
    def generate_pruned(self, prompt: Prompt, feats: list[torch.Tensor], keep: list[torch.Tensor], max_new_tokens: int,
                        should_stop: Callable[[], bool] | None = None) -> tuple[str, list[int], int]:
        """Greedy answer from the prompt with only the `keep[i]` token indices of image i (raster order
        within the image): kept tokens keep their own (t, h, w) positions of the full prompt, text after
        an image continues where the full image would end. Returns (text, new ids, prompt tokens).

        A loop of the stock forward with its KV cache: `generate` derives positions from image grids,
        which a pruned image no longer has. Greedy as `generate(do_sample=False)`; the checkpoint's
        repetition penalty is applied the same way."""
        from transformers import DynamicCache, RepetitionPenaltyLogitsProcessor

        inputs = self.model_inputs(prompt)
        mask = torch.ones(len(prompt.ids), dtype=torch.bool)
        sub = []
        for start, (_, grid), f, k in zip(prompt.image_starts, prompt.images, feats, keep):
            n = grid[0] * grid[1] * grid[2] // int(self.image_processor.merge_size) ** 2
            drop = torch.ones(n, dtype=torch.bool)
            drop[k] = False
            mask[start:start + n] = ~drop
            sub.append(f[k])
        mask = mask.to(self.device)
        ids = inputs["input_ids"][:, mask]
        pos = inputs["position_ids"][..., mask]
        types = inputs["mm_token_type_ids"][:, mask]
        gen = self.hf.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, (list, tuple)) else [gen.eos_token_id]
        eos = {int(e) for e in eos if e is not None}
        penalty = float(getattr(gen, "repetition_penalty", 1.0) or 1.0)
        processor = RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None
        cache = DynamicCache(config=self.hf.config.text_config)
        seen = ids
        next_pos = int(inputs["position_ids"].max()) + 1
        out = self.hf(input_ids=ids, mm_token_type_ids=types, position_ids=pos, cache=cache, use_cache=True,
                      mm_encoder_outputs=self.encoder_outputs(sub) if sub else None, logits_to_keep=1)
        new: list[int] = []
        for step in range(int(max_new_tokens)):
            logits = out.logits[:, -1].float()
            if processor is not None:
                logits = processor(seen, logits)
            token = int(logits.argmax(-1))
            new.append(token)
            if token in eos or (should_stop is not None and should_stop()) or step + 1 == int(max_new_tokens):
                break
            tok = torch.tensor([[token]], device=self.device)
            seen = torch.cat([seen, tok], dim=1)
            p = torch.full((3, 1, 1), next_pos + step, dtype=pos.dtype, device=self.device)
            out = self.hf(input_ids=tok, mm_token_type_ids=torch.zeros_like(tok, dtype=torch.int), position_ids=p,
                          cache=cache, use_cache=True, logits_to_keep=1)
        return self.tokenizer.decode(new, skip_special_tokens=True).strip(), new, int(ids.shape[1])


@dataclass
class PrefixCache:
    """Keys and values of layers 0..L of a question-independent prefix (reused across questions)."""

    cache: Any
    length: int


def _truncate(cache: Any, length: int) -> None:
    """Cut every filled layer of a KV cache back to its first `length` tokens (the prefix)."""
    for layer in cache.layers:
        excess = layer.get_seq_length() - int(length) if getattr(layer, "is_initialized", True) else 0
        if excess > 0:
            layer.crop(-excess)


def _raise_stop(module: Any, args: Any, output: Any) -> None:
    raise _StopForward


def last_token_attention(attn: Any, hidden_last: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                         keys: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scaling) of one query row, with the layer's own projections, q-norm (Qwen3)
    and rotary embedding; `keys` (1, kv_heads, n, head_dim) are the layer's cached keys (after RoPE).
    Returns (heads, n) float32. The last token sees every key, so no mask is needed."""
    module = sys.modules[type(attn).__module__]
    head_dim = int(attn.head_dim)
    q = attn.q_proj(hidden_last).view(1, 1, -1, head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q = q.transpose(1, 2)  # (1, heads, 1, hd)
    cos, sin = position_embeddings
    q, _ = module.apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    groups = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(groups, dim=1) if groups > 1 else keys
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2))[0, :, 0] * float(attn.scaling)
    return torch.softmax(logits, dim=-1)
