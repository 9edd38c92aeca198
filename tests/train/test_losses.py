"""The distillation loss against values worked out by hand."""

import math

import pytest
import torch

from lrs_focus.train.losses import (
    DistillWeights,
    chance_of_hit,
    distillation_loss,
    kl_teacher_student,
    mse_probabilities,
    pair_loss,
    top_fraction_hits,
)

# teacher logits [0, ln 3] -> p = [1/4, 3/4]; student logits [0, 0] -> q = [1/2, 1/2]
T = torch.tensor([0.0, math.log(3.0)])
S = torch.tensor([0.0, 0.0])
KL = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # 0.130812...
MSE = ((0.5 - 0.25) ** 2 + (0.5 - 0.75) ** 2) / 2  # 0.0625


def test_kl_by_hand():
    assert kl_teacher_student(T, S).item() == pytest.approx(KL, abs=1e-6)
    assert kl_teacher_student(T, T).item() == pytest.approx(0.0, abs=1e-7)
    # KL is not symmetric: KL(q||p) = 0.5 ln(2) + 0.5 ln(2/3)
    assert kl_teacher_student(S, T).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)


def test_mse_on_probabilities_by_hand():
    assert mse_probabilities(T, S).item() == pytest.approx(MSE, abs=1e-7)


def test_pair_loss_weights_hr_kl_twice():
    expected = KL + 2.0 * KL + MSE
    assert pair_loss(T, S, T, S).item() == pytest.approx(expected, abs=1e-6)
    # vision keys identical, tile keys differ: only the hr terms remain
    assert pair_loss(T, T, T, S).item() == pytest.approx(2.0 * KL + MSE, abs=1e-6)
    w = DistillWeights(kl=1.0, hr=0.0, mse=0.0)
    assert pair_loss(T, S, T, S, weights=w).item() == pytest.approx(KL, abs=1e-6)


def test_average_over_pairs_heads_queries():
    # pair 1: two heads, one query; head 0 = (T vs S), head 1 = identical -> mean = half
    tv = torch.stack([T, T]).unsqueeze(1)  # (heads=2, queries=1, keys=2)
    sv = torch.stack([S, T]).unsqueeze(1)
    pair1 = (tv, sv, tv, sv)
    pair2 = (tv, tv, tv, tv)  # a perfect student: 0
    full = KL + 2 * KL + MSE
    assert distillation_loss([pair1]).item() == pytest.approx(full / 2, abs=1e-6)
    assert distillation_loss([pair1, pair2]).item() == pytest.approx(full / 4, abs=1e-6)


def test_gradient_reaches_only_the_student():
    t = T.clone().requires_grad_(True)
    s = S.clone().requires_grad_(True)
    pair_loss(t, s, t, s).backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    # d KL / d s = q - p for softmax logits -> nonzero, pointing the student towards the teacher
    assert s.grad[1] < 0 < s.grad[0]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        pair_loss(T, torch.zeros(3), T, S)
    with pytest.raises(ValueError):
        distillation_loss([])


def test_top_fraction_and_chance():
    scores = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.05, 0.0, 0.4, 0.6])  # k = 2 -> keys 0, 7
    target = torch.zeros(8, dtype=torch.bool)
    target[7] = True
    assert top_fraction_hits(scores, target)
    target[:] = False
    target[6] = True
    assert not top_fraction_hits(scores, target)
    assert chance_of_hit(8, 1) == pytest.approx(0.25)
    assert chance_of_hit(8, 2) == pytest.approx(1 - (6 / 8) * (5 / 7))
