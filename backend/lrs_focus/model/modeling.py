"""The LVLM of the paper assembled from transformers parts (DESIGN 3.1, 3.3).

    vision_tower   CLIPVisionModel; features of layer `vision_select_layer` (-2), CLS dropped
    projector      Linear(mm_hidden, d) -> GELU -> Linear(d, d)
    image_newline  one learned d-vector closing every row of tile tokens
    llm            LlamaForCausalLM (Vicuna) or Qwen2ForCausalLM
    rfm            RegionFocusModule: R decoder layers of the LLM's own class + RMSNorm

Nothing here is a home-made transformer: decoder layers, norms, rotary embeddings and masks are
the family's own classes; this file only wires them and computes the one attention row the RFM
score needs (the last prompt token over the tile tokens) instead of full attention maps.

Sequence layout (the training engineer builds on `build_sequence`):
    [prefix text] [thumbnail P*P] [':'] [tile tokens, one newline per row] [suffix text] [answer]
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2ForCausalLM, StoppingCriteria, StoppingCriteriaList
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    repeat_kv,
)
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .config import LrsFocusConfig
from .prompts import PromptIds

_PARTS = {
    "llama": (LlamaForCausalLM, LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding),
    "qwen2": (Qwen2ForCausalLM, Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding),
}
IGNORE_INDEX = -100

#: pad colour of tiles and thumbnail: the CLIP mean, i.e. 0 after normalisation, as released.
CLIP_MEAN_RGB = tuple(int(round(255 * m)) for m in OPENAI_CLIP_MEAN)


def rfm_text_config(text_config: Any, num_layers: int) -> Any:
    """The LLM config for the RFM's layers: the LLM's own heads, KV heads and head size, as the public
    pruner builds its layers from a copy of the LLM config (only its score scale differs)."""
    cfg = copy.deepcopy(text_config)
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = ["full_attention"] * num_layers
    cfg._attn_implementation = "sdpa"  # released scoring runs sdpa whatever the LLM uses
    return cfg


def rfm_score_dim(hidden_size: int, rfm_head_dim: int) -> int:
    """The released score's scale: sqrt of hidden // (hidden // 128), the public pruner's head_dim."""
    return hidden_size // max(1, hidden_size // rfm_head_dim)


def qk_logits(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    query_index: torch.Tensor,
    key_index: torch.Tensor,
    scale_dim: int | None = None,
) -> torch.Tensor:
    """Scaled attention logits of decoder `layer` for chosen queries and keys, without computing the rest:
    hidden_states: (1, n, d), the layer's *input* (before its input norm). position_embeddings:
    (cos, sin) of the whole sequence, shape (1, n, head_dim). Returns (heads, n_q, n_k) in float32:
    q.k / sqrt(scale_dim or head_dim) with RoPE at the tokens' true positions and KV heads repeated
    (GQA); no mask, no softmax. Used for the RFM score and for the teacher/student signals of distillation."""
    attn = layer.self_attn
    head_dim = attn.head_dim
    x = layer.input_layernorm(hidden_states)
    cos, sin = position_embeddings
    xq, xk = x[:, query_index], x[:, key_index]
    q = attn.q_proj(xq).view(1, xq.shape[1], -1, head_dim).transpose(1, 2)
    k = attn.k_proj(xk).view(1, xk.shape[1], -1, head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, query_index], sin[:, query_index])
    k, _ = apply_rotary_pos_emb(k, k, cos[:, key_index], sin[:, key_index])
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    return (q.float() @ k.float().transpose(-1, -2))[0] / math.sqrt(scale_dim or head_dim)


class RegionFocusModule(nn.Module):
    """R decoder layers of the LLM's family plus RMSNorm, reading the LLM's input sequence.

    Checkpoint keys `model.mm_projector.token_pruner.{layers.N.*, norm.weight}` map to
    `layers.N.*` and `norm.weight` here. The final norm is loaded but unused at inference.
    """

    def __init__(self, config: LrsFocusConfig):
        super().__init__()
        _, layer_cls, norm_cls, rope_cls = _PARTS[config.family]
        self.config = rfm_text_config(config.text_config, config.rfm_layers)
        self.score_dim = rfm_score_dim(self.config.hidden_size, config.rfm_head_dim)
        self.layers = nn.ModuleList(layer_cls(self.config, i) for i in range(config.rfm_layers))
        self.norm = norm_cls(self.config.hidden_size, eps=self.config.rms_norm_eps)
        self.rotary_emb = rope_cls(config=self.config)

    def hidden_states(
        self, embeds: torch.Tensor, position_ids: torch.Tensor, upto: int | None = None,
        key_mask: torch.Tensor | None = None, keep_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Run layers [0, upto) causally (default: all but the last). Returns (last hidden, states,
        (cos, sin)); `states` = [input of layer 0, output of layer 0, ...] only when `keep_states`
        (training): the score needs the last layer's input alone (all states of a 45k-token pass at
        7B: ~1.3 GB). The 2-D mask (ones unless `key_mask` (1, n) masks keys) also makes transformers
        treat gapped position ids as one sequence, not as packed sequences."""
        upto = len(self.layers) - 1 if upto is None else upto
        pos_emb = self.rotary_emb(embeds, position_ids=position_ids)
        keys = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device) if key_mask is None \
            else key_mask.to(device=embeds.device, dtype=torch.long)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=embeds, attention_mask=keys, cache=None, position_ids=position_ids
        )
        h = embeds
        states = [h] if keep_states else []
        for layer in self.layers[:upto]:
            h = layer(h, attention_mask=mask, position_ids=position_ids, position_embeddings=pos_emb)
            if keep_states:
                states.append(h)
        return h, states, pos_emb

    def score(self, embeds: torch.Tensor, position_ids: torch.Tensor, query_index: int, key_index: torch.Tensor) -> torch.Tensor:
        """RFM score: softmax over `key_index` of the last layer's attention from `query_index`, mean over heads.

        Only that one query row is computed (DESIGN 3.3); returns float32 (n_keys,), summing to 1.
        """
        h, _, pos_emb = self.hidden_states(embeds, position_ids)
        q_idx = torch.tensor([query_index], device=embeds.device)
        logits = qk_logits(self.layers[-1], h, pos_emb, q_idx, key_index.to(embeds.device), self.score_dim)
        return torch.softmax(logits, dim=-1).mean(dim=0)[0]

    def score_with_placeholders(self, embeds: torch.Tensor, position_ids: torch.Tensor, query_index: int,
                                key_index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The released stage-B score over a canvas whose absent tiles are placeholders: the public code
        feeds the level's full canvas with zero embeddings for unselected tiles, masks those keys in
        RFM layers 0..R-2, then (`get_text_image_attn`) turns the 4-D float mask into booleans before
        adding it to the score logits: placeholder keys stay in the softmax, logit raised by 1. Released
        mode reproduces that; `present` (n,) bool marks real tokens. Returns (len(key_index),) float32."""
        h, _, pos_emb = self.hidden_states(embeds, position_ids, key_mask=present[None])
        q_idx = torch.tensor([query_index], device=embeds.device)
        key_index = key_index.to(embeds.device)
        logits = qk_logits(self.layers[-1], h, pos_emb, q_idx, key_index, self.score_dim)
        logits = logits + (~present.to(embeds.device)[key_index]).float()
        return torch.softmax(logits, dim=-1).mean(dim=0)[0]


class _PollStop(StoppingCriteria):
    """Ends greedy decoding as soon as `poll()` says so (cancellation between generated tokens)."""

    def __init__(self, poll: Callable[[], bool]):
        self.poll = poll
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.fired = self.fired or bool(self.poll())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


@dataclass
class MultimodalSequence:
    """One sample as the LLM/RFM read it. Spans index the sequence dimension of `embeds`."""

    embeds: torch.Tensor  # (1, n, d)
    position_ids: torch.Tensor  # (1, n) long
    labels: torch.Tensor | None  # (1, n) long, IGNORE_INDEX except answer tokens
    thumbnail: slice
    separator: int | None  # index of the ':' embedding (None without tiles)
    tiles: slice  # tile tokens incl. newline tokens (empty when none)
    query_index: int  # last prompt token (the RFM query; the token before the answer)

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


class LrsFocusModel(nn.Module):
    def __init__(self, config: LrsFocusConfig):
        super().__init__()
        self.config = config
        llm_cls = _PARTS[config.family][0]
        d = config.hidden_size
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.projector = nn.Sequential(nn.Linear(config.mm_hidden_size, d), nn.GELU(), nn.Linear(d, d))
        self.image_newline = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.llm = llm_cls(config.text_config)
        self.rfm = RegionFocusModule(config)
        self.separator_token_id: int | None = None  # set by the loader from the tokenizer (':')
        # float32 whatever the default dtype: these define the numerics (see `cast`)
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        self.register_buffer("_pixel_mean", mean, persistent=False)
        self.register_buffer("_pixel_std", std, persistent=False)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    def cast(self, dtype: torch.dtype) -> "LrsFocusModel":
        """Parameters to `dtype`; buffers keep their dtype, as `from_pretrained(dtype=...)` leaves them.

        `module.to(dtype)` would also cast the rotary `inv_freq` and the pixel mean/std: in bf16
        the rotary angles at positions of several thousand are off by radians, and every RFM score
        and answer is wrong. Those buffers define the numerics and stay float32.
        """
        for param in self.parameters():
            param.data = param.data.to(dtype)
        return self

    def set_attention(self, implementation: str) -> None:
        """"sdpa" (default), "eager" (attention maps) or "flash_attention_2" for the LLM and the vision
        tower. The RFM stays on sdpa (or eager) whatever is asked: its released stage-B pass gives a
        2-D key mask whose placeholder queries attend to earlier tokens under sdpa, as the public
        pruner forces; flash-attn would unpad them away and score differently."""
        for cfg in (self.config.text_config, self.config.vision_config, self.llm.config, self.vision_tower.config):
            cfg._attn_implementation = implementation
        self.rfm.config._attn_implementation = "eager" if implementation == "eager" else "sdpa"

    # -- (a) vision: pixels -> projected tokens ---------------------------------------------------
    def pixels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, B, B, 3) RGB -> normalised float (N, 3, B, B) on the model's device/dtype.

        uint8 input is normalised here (CLIP mean/std, float32, as torchvision's ToTensor +
        Normalize); float input is taken as already normalised (the exact pixel path, whose
        padding is exactly 0 as in the released code).
        """
        x = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
        if x.ndim == 3:
            x = x[None]
        x = x.to(self.device).permute(0, 3, 1, 2)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            x = (x - self._pixel_mean.float()) / self._pixel_std.float()
        return x.to(self.dtype)

    def project_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """CLIP layer `vision_select_layer`, CLS dropped, projected: (N, P, P, d)."""
        feats = self.vision_features(self.pixels(images))[:, 1:]
        n, p2, _ = feats.shape
        p = int(math.isqrt(p2))
        return self.projector(feats).view(n, p, p, -1)

    def vision_features(self, px: torch.Tensor) -> torch.Tensor:
        """CLIP hidden state `vision_select_layer` (CLS included), bit for bit the stock
        `output_hidden_states` pick (embeddings -> pre_layrnorm -> unmasked layers), without running
        the layers after it (the released -2 skips the last) or keeping every layer's states."""
        tower = self.vision_tower
        layers = tower.encoder.layers
        upto = range(len(layers) + 1)[self.config.vision_select_layer]  # hidden_states[k]: after k layers
        h = tower.pre_layrnorm(tower.embeddings(px))
        for layer in layers[:upto]:
            h = layer(h, None)
        return h

    def encode_thumbnail(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The thumbnail's P*P tokens (576 for CLIP-L/14-336), not pooled: (P*P, d)."""
        return self.project_images(image)[0].flatten(0, 1)

    def encode_tiles(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Tiles -> projected -> 2x2 pooled (bilinear to ceil(P/2), as released): (N, T, T, d)."""
        feats = self.project_images(images).permute(0, 3, 1, 2)
        t = -(-feats.shape[-1] // 2)
        pooled = F.interpolate(feats.float(), size=(t, t), mode="bilinear", align_corners=False)
        return pooled.to(feats.dtype).permute(0, 2, 3, 1)

    def stitch(self, tile_tokens: torch.Tensor, token_grid: tuple[int, int]) -> torch.Tensor:
        """All tiles of a level (n_rows, n_cols, T, T, d) -> unpadded grid + newline column (rows, cols+1, d)."""
        nr, nc, t, _, d = tile_tokens.shape
        grid = tile_tokens.permute(0, 2, 1, 3, 4).reshape(nr * t, nc * t, d)
        rows, cols = token_grid
        grid = grid[:rows, :cols]
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, d)
        return torch.cat([grid, newline], dim=1)

    # -- (b) the multimodal sequence --------------------------------------------------------------
    def text_embeds(self, ids: Sequence[int]) -> torch.Tensor:
        t = torch.as_tensor(list(ids), dtype=torch.long, device=self.device)
        return self.llm.get_input_embeddings()(t)

    def build_sequence(
        self,
        prompt: PromptIds,
        thumbnail: torch.Tensor | None,
        tiles: torch.Tensor | None = None,
        tile_offsets: torch.Tensor | None = None,
        tile_span: int | None = None,
        with_answer: bool = False,
    ) -> MultimodalSequence:
        """[prefix][thumbnail][':'][tiles][suffix](+answer) as embeddings, labels and positions.

        thumbnail: (P*P, d) or None (text only). tiles: (m, d) tile tokens in raster order incl.
        newline tokens, or None (thumbnail only: no ':' either). Positions are contiguous unless
        `tile_offsets` (m,) gives each tile token's offset inside a canvas of `tile_span` positions
        (released stage B: unselected tiles keep their positions but are absent). Labels are set on
        the answer tokens when `with_answer` (training), IGNORE_INDEX elsewhere.
        """
        parts = [self.text_embeds(prompt.prefix)]
        pos = [torch.arange(len(prompt.prefix))]
        cursor = len(prompt.prefix)
        thumb_start = cursor
        if thumbnail is not None:
            parts.append(thumbnail.to(self.dtype))
            pos.append(torch.arange(cursor, cursor + thumbnail.shape[0]))
            cursor += thumbnail.shape[0]
        thumb = slice(thumb_start, cursor)
        separator = None
        tile_start = tile_end = cursor
        n_seq = cursor
        if tiles is not None:
            if self.separator_token_id is None:
                raise RuntimeError("separator_token_id (':') is not set on the model")
            parts.append(self.text_embeds([self.separator_token_id]))
            pos.append(torch.tensor([cursor]))
            separator = cursor
            cursor += 1
            n_seq = cursor
            parts.append(tiles.to(self.dtype))
            if tile_offsets is None:
                pos.append(torch.arange(cursor, cursor + tiles.shape[0]))
                cursor += tiles.shape[0]
            else:
                pos.append(cursor + tile_offsets.cpu().long())
                cursor += int(tile_span if tile_span is not None else int(tile_offsets.max()) + 1)
            tile_start, tile_end = n_seq, n_seq + tiles.shape[0]
            n_seq = tile_end
        parts.append(self.text_embeds(prompt.suffix))
        pos.append(torch.arange(cursor, cursor + len(prompt.suffix)))
        cursor += len(prompt.suffix)
        n_seq += len(prompt.suffix)
        query_index = n_seq - 1
        labels = None
        if with_answer:
            if not prompt.answer:
                raise ValueError("with_answer needs prompt.answer token ids")
            parts.append(self.text_embeds(prompt.answer))
            pos.append(torch.arange(cursor, cursor + len(prompt.answer)))
            labels = torch.full((1, n_seq + len(prompt.answer)), IGNORE_INDEX, dtype=torch.long)
            labels[0, n_seq:] = torch.as_tensor(prompt.answer)
            labels = labels.to(self.device)
        embeds = torch.cat(parts, dim=0)[None]
        position_ids = torch.cat(pos).long()[None].to(self.device)
        return MultimodalSequence(embeds, position_ids, labels, thumb, separator, slice(tile_start, tile_end), query_index)

    # -- (c) LLM and RFM ----------------------------------------------------------------------------
    def llm_forward(self, seq: MultimodalSequence, **kwargs: Any) -> Any:
        """The stock `...ForCausalLM.forward` on the sequence's embeddings (logits, loss when labelled)."""
        ones = torch.ones(seq.embeds.shape[:2], dtype=torch.long, device=seq.embeds.device)
        return self.llm(
            inputs_embeds=seq.embeds,
            attention_mask=ones,
            position_ids=seq.position_ids,
            labels=seq.labels,
            use_cache=False,
            **kwargs,
        )

    def rfm_scores(self, seq: MultimodalSequence, present: torch.Tensor | None = None) -> torch.Tensor:
        """RFM scores of the sequence's tile tokens (newline tokens included), float32 (m,).

        `present` (m,) bool: the tile part is a full released canvas whose False entries are
        placeholders (released stage B, `RegionFocusModule.score_with_placeholders`)."""
        keys = torch.arange(seq.tiles.start, seq.tiles.stop, device=seq.embeds.device)
        if present is None:
            return self.rfm.score(seq.embeds.detach(), seq.position_ids, seq.query_index, keys)
        valid = torch.ones(seq.length, dtype=torch.bool)
        valid[seq.tiles] = present.cpu()
        return self.rfm.score_with_placeholders(seq.embeds.detach(), seq.position_ids, seq.query_index, keys, valid)

    @torch.no_grad()
    def generate(self, seq: MultimodalSequence, tokenizer: Any, max_new_tokens: int = 64,
                 should_stop: Callable[[], bool] | None = None, config_eos_only: bool = False) -> tuple[str, list[int]]:
        """Greedy decoding from the sequence (contiguous positions from 0, as in the released final pass).

        `should_stop` is polled after every generated token; when it returns True decoding ends
        there (the caller raises Cancelled), so a cancel never waits for a long answer. Decoding
        stops at the tokenizer's and the model config's end tokens; `config_eos_only` keeps only
        the config's, as the released `model.generate` does.
        """
        ones = torch.ones(seq.embeds.shape[:2], dtype=torch.long, device=seq.embeds.device)
        config_eos = self.llm.config.eos_token_id
        config_eos = list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
        candidates = config_eos if config_eos_only else [tokenizer.eos_token_id, *config_eos]
        eos = sorted({i for i in candidates if isinstance(i, int)})
        criteria = StoppingCriteriaList([_PollStop(should_stop)]) if should_stop is not None else None
        out = self.llm.generate(
            inputs_embeds=seq.embeds,
            attention_mask=ones,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos or None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
            stopping_criteria=criteria,
        )
        ids = out[0].tolist()
        return tokenizer.decode(ids, skip_special_tokens=True).strip(), ids

    @contextlib.contextmanager
    def float16_rotary(self, enabled: bool = True) -> Iterator[None]:
        """Rotary cos/sin rounded to float16, as the released loader has them.

        The public code builds the model under torch_dtype=float16, so its cached cos/sin tables
        hold float16-rounded values, and `model.float()` keeps them rounded. Released mode in
        float32 turns this on to reproduce the official numbers; it is a no-op in float16.
        """
        if not enabled:
            yield
            return

        def rounded(module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]):
            cos, sin = output
            return cos.half().to(cos.dtype), sin.half().to(sin.dtype)

        handles = [m.register_forward_hook(rounded) for m in (self.llm.model.rotary_emb, self.rfm.rotary_emb)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # -- (d) RFM initialisation for training -----------------------------------------------------------
    @torch.no_grad()
    def init_rfm_from_llm(self, llm_layers: Sequence[int] | None = None) -> list[int]:
        """Copy LLM decoder layers into the RFM (default [l0-1] + llm_layer_list = {0,1,5,11,14}) and the
        final norm into the RFM norm, as the released `load_pruner_weight_from_llm`. Returns the layers used."""
        layers = list(llm_layers) if llm_layers is not None else self.config.rfm_init_layers
        if len(layers) != len(self.rfm.layers):
            raise ValueError(f"{len(self.rfm.layers)} RFM layers need as many LLM layer indices, got {layers}")
        src = self.llm.model.layers
        for dst, i in zip(self.rfm.layers, layers):
            dst.load_state_dict(src[i].state_dict())
        self.rfm.norm.load_state_dict(self.llm.model.norm.state_dict())
        return layers
