"""Losses: the weighted soft cross-entropy against hand-computed values, ignored rows, the keypoint L1, the heatmap
targets of the spatial localiser and their agreement with the augmentation's moved points."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from keypoint_images import blobs

from kaggle_utils.core import presets
from kaggle_utils.core.constants import IGNORE_INDEX
from kaggle_utils.models.losses import (
    gaussian_heatmaps,
    heatmap_divergence,
    keypoint_l1,
    pseudo_label_loss,
    weighted_soft_cross_entropy,
)
from kaggle_utils.models.networks import soft_argmax
from kaggle_utils.training import augment
from kaggle_utils.training.augment import Stage1Augment


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


def test_gaussian_heatmaps_are_distributions_peaked_at_their_points() -> None:
    points = torch.tensor([[[0.25, 0.75], [0.6, 0.4]]])
    maps = gaussian_heatmaps(points, (16, 16), stride=4, sigma=1.0)
    assert maps.shape == (1, 2, 16, 16) and torch.allclose(maps.sum((-2, -1)), torch.ones(1, 2))
    # relative 0.25 of a 64-px input is pixel 16, which lies in cell 4 (pixels 16-19, centre 17.5): the peak is there
    assert divmod(int(maps[0, 0].argmax()), 16) == (11, 3) or divmod(int(maps[0, 0].argmax()), 16) == (12, 4)


def test_the_divergence_is_zero_at_the_target_and_grows_with_the_distance() -> None:
    points = torch.tensor([[[0.5, 0.5]]])
    target_logits = gaussian_heatmaps(points, (16, 16), 4, 1.0).log()
    assert float(heatmap_divergence(target_logits, points, 4, 1.0)) == pytest.approx(0.0, abs=1e-5)
    near, far = (heatmap_divergence(target_logits, points + d, 4, 1.0) for d in (0.03, 0.1))
    assert 0 < float(near) < float(far)


@pytest.mark.parametrize("stride", [2, 4])
def test_heatmap_targets_follow_the_points_through_the_stage1_augmentation(stride: int, monkeypatch) -> None:
    """Warp images with a blob on each point: the moved points' target heatmaps sit where the blobs went (the
    soft-argmax of the warped images, pooled to the heatmap grid, agrees with the moved points within a pixel)."""
    monkeypatch.setattr(augment, "brightness_contrast", lambda images: images)
    torch.manual_seed(0)
    cfg = dataclasses.replace(presets.FULL_PRESETS["stage1_t2"], img_size=64, distort_p=0.0, blur_p=0.0)
    keypoints = 44 + 40 * torch.rand(4, 10, 2)  # central pixels of a 128-px image
    images, moved = Stage1Augment(cfg)(blobs(keypoints, 128, sigma=6.0), keypoints)
    relative = moved / 64
    pooled = F.avg_pool2d(images, stride).clamp_min(1e-12)
    read = soft_argmax(pooled.log(), stride)  # the log of a Gaussian blob: its soft-argmax is its centre
    assert ((read - relative).norm(dim=-1) * 64).max() < 1.0
    assert not torch.allclose(relative * 128, keypoints, atol=2.0)  # the geometry did change
    logits = pooled.log()
    assert float(heatmap_divergence(logits, relative, stride, 1.0)) < float(
        heatmap_divergence(logits, keypoints / 128, stride, 1.0)
    )
