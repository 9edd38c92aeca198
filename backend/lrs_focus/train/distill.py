"""Teacher and student attention signals on one training sequence, and the combined loss.

Teacher (DESIGN 3.5, algorithm.md 4.2): for each distilled pair, LLM layer l's own pre-norm q/k
with RoPE, applied to the hidden states that enter layer l (output of layer l-1, detached), for
the query = the token just before the answer. Student (4.3): the same on the RFM, pair k using
RFM layer k+1 on the output of RFM layer k, fed with the detached input embeddings. Both come
from `modeling.qk_logits`, so the student's computation is exactly the one the RFM score uses at
inference. Keys: vision = thumbnail + tile tokens (the ':' separator is text, not vision), hr =
tile tokens incl. newline tokens (the keys the RFM scores).

Everything is read from the stock forward (`output_hidden_states`): no hook or patch of the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..model.modeling import MultimodalSequence, qk_logits
from .losses import DistillWeights, distillation_loss


@dataclass(frozen=True)
class PairSpec:
    """One teacher/student pair: LLM layer `teacher` <-> RFM layer `student`."""

    teacher: int
    student: int


def layer_pairs(rfm_layer_list: Sequence[int], which: str | Sequence[int] = "first,last") -> list[PairSpec]:
    """Pairs to distil. Pair k is (LLM layer rfm_layer_list[k], RFM layer k+1) as in the released code.

    `which`: "first,last" (paper default), "all", or pair indices (e.g. [0, 3] or "0,3").
    """
    n = len(rfm_layer_list)
    if isinstance(which, str):
        key = which.replace(" ", "").lower()
        if key in ("first,last", "firstlast", "default"):
            idx = sorted({0, n - 1})
        elif key == "all":
            idx = list(range(n))
        else:
            idx = [int(p) for p in key.split(",") if p]
    else:
        idx = [int(p) for p in which]
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise ValueError(f"pair indices must be in 0..{n - 1}, got {which!r}")
    return [PairSpec(teacher=int(rfm_layer_list[i]), student=i + 1) for i in idx]


def _keys(seq: MultimodalSequence) -> tuple[torch.Tensor, torch.Tensor]:
    device = seq.embeds.device
    thumb = torch.arange(seq.thumbnail.start, seq.thumbnail.stop, device=device)
    tiles = torch.arange(seq.tiles.start, seq.tiles.stop, device=device)
    return torch.cat([thumb, tiles]), tiles


def _match_heads(teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal head counts compare head by head; otherwise compare head-mean distributions (as log-probs)."""
    if teacher.shape[0] == student.shape[0]:
        return teacher, student
    t = torch.log_softmax(teacher, dim=-1).exp().mean(0, keepdim=True).clamp_min(1e-12).log()
    s = torch.log_softmax(student, dim=-1).exp().mean(0, keepdim=True).clamp_min(1e-12).log()
    return t, s


def teacher_logits(model: Any, seq: MultimodalSequence, hidden_states: Sequence[torch.Tensor], pairs: Sequence[PairSpec]):
    """[(vis, hr)] per pair from the LLM: (heads, 1, keys) float32, detached."""
    vis, hr = _keys(seq)
    query = torch.tensor([seq.query_index], device=seq.embeds.device)
    pos_emb = model.llm.model.rotary_emb(seq.embeds, position_ids=seq.position_ids)
    out = []
    with torch.no_grad():
        for p in pairs:
            layer = model.llm.model.layers[p.teacher]
            h = hidden_states[p.teacher].detach()
            out.append((qk_logits(layer, h, pos_emb, query, vis), qk_logits(layer, h, pos_emb, query, hr)))
    return out


def student_logits(model: Any, seq: MultimodalSequence, pairs: Sequence[PairSpec]):
    """[(vis, hr)] per pair from the RFM, on the detached embeddings: (heads, 1, keys) float32."""
    vis, hr = _keys(seq)
    query = torch.tensor([seq.query_index], device=seq.embeds.device)
    upto = max(p.student for p in pairs)
    _, states, pos_emb = model.rfm.hidden_states(seq.embeds.detach(), seq.position_ids, upto=upto, keep_states=True)
    out = []
    for p in pairs:
        layer = model.rfm.layers[p.student]
        h = states[p.student]
        dim = model.rfm.score_dim  # the scale of the inference score
        out.append((qk_logits(layer, h, pos_emb, query, vis, dim), qk_logits(layer, h, pos_emb, query, hr, dim)))
    return out


def batch_losses(
    model: Any,
    seqs: Sequence[MultimodalSequence],
    pairs: Sequence[PairSpec],
    distill_weight: float = 1.0,
    lm_weight: float = 1.0,
    weights: DistillWeights = DistillWeights(),
) -> "StepLosses":
    """`sequence_losses` for several labelled sequences in one padded forward of the LLM and the RFM.

    Right padding under a causal mask leaves every real token's attention unchanged (pads come
    after it), so the teacher/student rows of each sample equal its unbatched ones. The LM loss is
    the mean over all answer tokens of the batch (transformers' convention).
    """
    from ..model.modeling import IGNORE_INDEX

    device = seqs[0].embeds.device
    n = max(s.length for s in seqs)
    d = seqs[0].embeds.shape[-1]
    embeds = seqs[0].embeds.new_zeros(len(seqs), n, d)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    pos = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    labels = torch.full((len(seqs), n), IGNORE_INDEX, dtype=torch.long, device=device)
    for b, s in enumerate(seqs):
        embeds[b, : s.length] = s.embeds[0]
        mask[b, : s.length] = 1
        pos[b, : s.length] = s.position_ids[0]
        pos[b, s.length :] = torch.arange(1, n - s.length + 1, device=device) + s.position_ids[0, -1]
        if s.labels is not None:
            labels[b, : s.length] = s.labels[0]
    need_lm = lm_weight != 0.0
    with torch.set_grad_enabled(need_lm and torch.is_grad_enabled()):
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                        labels=labels if need_lm else None, use_cache=False, output_hidden_states=True)
    lm = out.loss if need_lm else torch.zeros((), device=device)
    distill = torch.zeros((), device=device)
    if distill_weight != 0.0 and pairs:
        t_pos = model.llm.model.rotary_emb(embeds, position_ids=pos)
        upto = max(p.student for p in pairs)
        _, states, s_pos = model.rfm.hidden_states(embeds.detach(), pos, upto=upto, keep_states=True)
        terms = []
        for b, s in enumerate(seqs):
            vis, _ = _keys(s)
            n_thumb = s.thumbnail.stop - s.thumbnail.start
            q = torch.tensor([s.query_index], device=device)
            tb = (t_pos[0][b : b + 1], t_pos[1][b : b + 1])
            sb = (s_pos[0][b : b + 1], s_pos[1][b : b + 1])
            for p in pairs:
                with torch.no_grad():
                    t = qk_logits(model.llm.model.layers[p.teacher], out.hidden_states[p.teacher][b : b + 1].detach(), tb, q, vis)
                st = qk_logits(model.rfm.layers[p.student], states[p.student][b : b + 1], sb, q, vis, model.rfm.score_dim)
                tv, sv = _match_heads(t, st)
                th, sh = _match_heads(t[..., n_thumb:], st[..., n_thumb:])  # tile keys follow the thumbnail
                terms.append((tv, sv, th, sh))
        distill = distillation_loss(terms, weights)
    return StepLosses(lm_weight * lm + distill_weight * distill, lm.detach(), distill.detach())


@dataclass
class StepLosses:
    total: torch.Tensor
    lm: torch.Tensor
    distill: torch.Tensor


def sequence_losses(
    model: Any,
    seq: MultimodalSequence,
    pairs: Sequence[PairSpec],
    distill_weight: float = 1.0,
    lm_weight: float = 1.0,
    weights: DistillWeights = DistillWeights(),
) -> StepLosses:
    """L = lm_weight * L_LM + distill_weight * L_distill on one labelled sequence (paper: 1 and 1)."""
    need_lm = lm_weight != 0.0
    if need_lm:
        out = model.llm_forward(seq, output_hidden_states=True)
        lm = out.loss
        hidden = out.hidden_states
    else:  # distillation only: the teacher needs the hidden states, not the gradient
        with torch.no_grad():
            hidden = model.llm_forward(seq, output_hidden_states=True).hidden_states
        lm = torch.zeros((), device=seq.embeds.device)
    if distill_weight != 0.0 and pairs:
        teach = teacher_logits(model, seq, hidden, pairs)
        stud = student_logits(model, seq, pairs)
        terms = []
        for (tv, th), (sv, sh) in zip(teach, stud):
            tv, sv = _match_heads(tv, sv)
            th, sh = _match_heads(th, sh)
            terms.append((tv, sv, th, sh))
        distill = distillation_loss(terms, weights)
    else:
        distill = torch.zeros((), device=seq.embeds.device)
    return StepLosses(lm_weight * lm + distill_weight * distill, lm.detach(), distill.detach())
