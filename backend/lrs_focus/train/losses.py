"""The paper's attention-distillation loss as pure tensor functions (no model in sight).

Why pure functions: the loss is the one part of training that the released code got wrong in two
different ways (algorithm.md 4.4); keeping it free of model plumbing lets the unit tests check it
against values worked out by hand.

Inputs are raw scaled attention logits q.k/sqrt(d) of shape (..., heads, queries, keys) for the
teacher (LLM layer) and the student (the matching RFM layer), already restricted to the keys of
interest. Paper Eq. 4-6, with lambda_hr = 2, lambda_mse = lambda_kl = 1:

    L = mean over pairs, heads, queries of
        KL(softmax(t_vis) || softmax(s_vis)) + 2.0 * KL(softmax(t_hr) || softmax(s_hr))
        + MSE(softmax(s_hr), softmax(t_hr))

where "vis" = every vision key (thumbnail + tile tokens) and "hr" = the tile tokens only. The MSE
is taken on probabilities (the paper's A), averaged over keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillWeights:
    """lambda_kl, lambda_hr, lambda_mse of the paper (Table 2 caption, section 5.1)."""

    kl: float = 1.0
    hr: float = 2.0
    mse: float = 1.0


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) over the last axis, one value per leading index.

    The teacher is detached: gradients only flow into the student.
    """
    t_log = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    s_log = F.log_softmax(student_logits.float(), dim=-1)
    return (t_log.exp() * (t_log - s_log)).sum(dim=-1)


def mse_probabilities(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over keys of (softmax(student) - softmax(teacher))^2, one value per leading index."""
    t = F.softmax(teacher_logits.detach().float(), dim=-1)
    s = F.softmax(student_logits.float(), dim=-1)
    return ((s - t) ** 2).mean(dim=-1)


def pair_loss(
    teacher_vis: torch.Tensor,
    student_vis: torch.Tensor,
    teacher_hr: torch.Tensor,
    student_hr: torch.Tensor,
    weights: DistillWeights = DistillWeights(),
) -> torch.Tensor:
    """Per-(head, query) loss of one teacher/student pair: shape = logits shape without keys."""
    if teacher_vis.shape != student_vis.shape or teacher_hr.shape != student_hr.shape:
        raise ValueError(
            f"teacher/student shapes differ: vis {tuple(teacher_vis.shape)} vs {tuple(student_vis.shape)}, "
            f"hr {tuple(teacher_hr.shape)} vs {tuple(student_hr.shape)}"
        )
    kl_vis = kl_teacher_student(teacher_vis, student_vis)
    kl_hr = kl_teacher_student(teacher_hr, student_hr)
    mse_hr = mse_probabilities(teacher_hr, student_hr)
    return weights.kl * (kl_vis + weights.hr * kl_hr) + weights.mse * mse_hr


def distillation_loss(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: DistillWeights = DistillWeights(),
) -> torch.Tensor:
    """Average of `pair_loss` over pairs, heads and queries (the paper's 1/(K*H) sum).

    `pairs` holds (teacher_vis, student_vis, teacher_hr, student_hr) per distilled layer pair.
    """
    if not pairs:
        raise ValueError("distillation needs at least one teacher/student layer pair")
    return torch.stack([pair_loss(*p, weights=weights).mean() for p in pairs]).mean()


def top_fraction_hits(scores: torch.Tensor, target: torch.Tensor, fraction: float = 0.25) -> bool:
    """Whether any `target` key (bool mask) is among the top `fraction` of `scores` (1-D).

    The same top-k rule as the method's pruning: k = max(1, floor(fraction * n)).
    """
    n = scores.numel()
    k = max(1, int(fraction * n))
    top = torch.topk(scores.float(), k).indices
    return bool(target.reshape(-1)[top].any())


def chance_of_hit(n_keys: int, n_targets: int, fraction: float = 0.25) -> float:
    """Probability that a uniformly random top-k set (k as above) contains any of n_targets keys."""
    k = max(1, int(fraction * n_keys))
    if n_targets <= 0:
        return 0.0
    miss = 1.0
    for i in range(k):  # hypergeometric: draw k keys without replacement, none a target
        miss *= max(0.0, (n_keys - n_targets - i) / (n_keys - i))
    return 1.0 - miss
