"""Losses: the weighted soft cross-entropy against hand-computed values, ignored rows, the keypoint L1."""

from __future__ import annotations

import math

import torch

from kaggle_utils.constants import IGNORE_INDEX
from kaggle_utils.losses import keypoint_l1, pseudo_label_loss, weighted_soft_cross_entropy


def test_two_rows_by_hand():
    # Row 0: uniform logits, Severe -> weight 4 * log 3.
    # Row 1: softmax [1/4, 1/2, 1/4], soft target [0.5, 0.5, 0] -> tie goes to Normal (weight 1),
    #        loss -(0.5 log 1/4 + 0.5 log 1/2) = 1.5 log 2.
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0]])
    target = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    expected = (4 * math.log(3) + 1.5 * math.log(2)) / 2
    assert math.isclose(weighted_soft_cross_entropy(logits, target).item(), expected, rel_tol=1e-6)


def test_ignored_row_weighs_zero_but_counts_in_the_mean():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, -3.0, 2.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [IGNORE_INDEX] * 3], dtype=torch.float32)
    assert math.isclose(weighted_soft_cross_entropy(logits, target).item(), 2 * math.log(3) / 2, rel_tol=1e-6)


def test_dominant_class_of_a_soft_target_sets_the_weight():
    logits = torch.zeros(1, 3)
    target = torch.tensor([[0.2, 0.3, 0.5]])
    assert math.isclose(weighted_soft_cross_entropy(logits, target).item(), 4 * math.log(3), rel_tol=1e-6)


def test_no_nan_with_ignored_rows_and_extreme_logits():
    logits = torch.tensor([[-float("inf"), 0.0, 1e4], [0.0, 1.0, 2.0], [1e4, -1e4, 0.0]], requires_grad=True)
    target = torch.tensor([[IGNORE_INDEX] * 3, [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float32)
    loss = weighted_soft_cross_entropy(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad[1:]).all()
    all_ignored = torch.full((4, 3), float(IGNORE_INDEX))
    assert weighted_soft_cross_entropy(torch.randn(4, 3), all_ignored).item() == 0.0


def test_any_leading_shape_is_flattened():
    logits, target = torch.randn(2, 5, 5, 3), torch.eye(3)[torch.randint(3, (2, 5, 5))]
    flat = weighted_soft_cross_entropy(logits.reshape(-1, 3), target.reshape(-1, 3))
    assert torch.allclose(weighted_soft_cross_entropy(logits, target), flat)


def test_keypoint_l1_is_the_mean_absolute_error():
    pred = torch.zeros(2, 10, 2)
    target = torch.full((2, 20), 0.25)
    assert math.isclose(keypoint_l1(pred, target).item(), 0.25, rel_tol=1e-6)


def test_pseudo_label_loss_is_the_weighted_sum_of_both_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 3)
    target = torch.eye(3)[torch.randint(3, (4, 5))]
    target[0, 1] = IGNORE_INDEX
    pseudo = torch.rand(4, 5, 3).softmax(-1)
    pseudo[2, 2] = IGNORE_INDEX  # a row without an OOF prediction
    label_loss = weighted_soft_cross_entropy(logits, target)
    pseudo_loss = weighted_soft_cross_entropy(logits, pseudo)
    for w in (0.0, 0.3, 0.5, 1.0):
        expected = (1 - w) * label_loss + w * pseudo_loss
        assert math.isclose(pseudo_label_loss(logits, target, pseudo, w).item(), expected.item(), rel_tol=1e-6)
