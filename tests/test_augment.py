"""Batch augmentation: keypoints follow the image, all channels of a sample share one draw, the photometric ops."""

from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from keypoint_images import blobs, peaks_near
from torch import nn

from kaggle_utils.core import presets
from kaggle_utils.training import augment
from kaggle_utils.training.augment import (
    GaussianBlur3,
    MedianBlur3,
    MotionBlur3,
    OneOf,
    Stage1Augment,
    Stage2Augment,
    VerticalFlip,
    coarse_dropout,
    filter3x3,
)


@pytest.mark.parametrize("out_size", [128, 64])
def test_stage1_keypoints_follow_the_image(out_size, monkeypatch):
    # Brightness/contrast can clip a blob flat; the test is about geometry, so it is switched off here.
    monkeypatch.setattr(augment, "brightness_contrast", lambda images: images)
    torch.manual_seed(0)
    cfg = dataclasses.replace(presets.FULL_PRESETS["stage1_t2"], img_size=out_size, distort_p=1.0)
    keypoints = 44 + 40 * torch.rand(6, 10, 2)  # central, so no blob leaves the 128-px image
    aug = Stage1Augment(cfg)
    for op in aug.distortion.ops:
        # Milder warps: a cell magnified many times spreads a blob into a plateau whose maximum says little.
        # The distortions' own tests hold their full strength to the exact inverse.
        op.limit = 0.3
    images, moved = aug(blobs(keypoints, 128), keypoints)
    assert images.shape == (6, 10, out_size, out_size) and moved.shape == (6, 10, 2)
    assert not torch.allclose(moved * 128 / out_size, keypoints, atol=1.0)  # the geometry did change
    where, value = peaks_near(images, moved)
    assert (where - moved).norm(dim=-1).max() < 2.0 and value.min() > 0.5


def test_stage2_channels_share_the_geometry_and_samples_differ():
    torch.manual_seed(0)
    cfg = dataclasses.replace(presets.FULL_PRESETS["sp1"], img_size=32)
    aug = Stage2Augment(cfg)
    aug.blur_or_noise.ops[3] = nn.Identity()  # noise is drawn per pixel and channel, on purpose
    frame = torch.rand(1, 1, 64, 64)
    out = aug(frame.expand(6, 10, 64, 64).contiguous())
    assert out.shape == (6, 10, 32, 32) and out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # parameters are drawn per sample


def test_one_of_applies_each_op_to_the_samples_that_drew_it():
    torch.manual_seed(0)
    images = torch.rand(64, 2, 4, 4)
    out = OneOf([VerticalFlip(), nn.Identity()], p=0.5)(images)
    flipped = (out == images.flip(-2)).flatten(1).all(dim=1)
    kept = (out == images).flatten(1).all(dim=1)
    assert (flipped | kept).all() and 8 < flipped.sum() < 26  # about a quarter flipped


def test_stage2_runs_under_autocast():
    cfg = dataclasses.replace(presets.FULL_PRESETS["sp1"], img_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Stage2Augment(cfg)(torch.rand(2, 4, 32, 32))
    assert out.shape == (2, 4, 16, 16) and out.dtype == torch.float32


def test_motion_blur_draws_a_line_between_two_distinct_kernel_cells():
    blur = MotionBlur3()
    torch.manual_seed(0)
    kernels = blur.draw(20000, torch.device("cpu"))
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(len(kernels)))
    cells = (kernels > 0).sum(dim=(1, 2))
    assert cells.min() == 2 and cells.max() == 3
    # every line between two distinct cells turns up (and nothing else); columns are shared one time in three
    lines = {tuple(k.flatten().tolist()) for k in blur.kernels.flatten(0, 3) if (k > 0).sum() > 1}
    assert {tuple(k.flatten().tolist()) for k in kernels.unique(dim=0)} == lines
    columns = (kernels > 0).any(dim=1).sum(dim=1)
    assert abs((columns == 1).float().mean() - 1 / 3) < 0.015


def test_gaussian_blur_matches_cv2_with_sigma_zero():
    images = torch.rand(2, 3, 9, 11)
    out = GaussianBlur3()(images)
    for i, c in itertools.product(range(2), range(3)):
        assert np.allclose(out[i, c].numpy(), cv2.GaussianBlur(images[i, c].numpy(), (3, 3), 0), atol=1e-6)


def test_filter3x3_matches_cv2_filter2d_with_reflect101_border():
    torch.manual_seed(0)
    images, kernels = torch.rand(3, 2, 9, 11), MotionBlur3().draw(3, torch.device("cpu"))
    out = filter3x3(images, kernels)
    for i, c in itertools.product(range(3), range(2)):
        reference = cv2.filter2D(images[i, c].numpy(), -1, kernels[i].numpy(), borderType=cv2.BORDER_REFLECT_101)
        assert np.allclose(out[i, c].numpy(), reference, atol=1e-6)


def test_median_blur_matches_a_reference():
    images = torch.rand(2, 3, 11, 13)
    patches = F.unfold(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3)  # (B, C * 9, H * W)
    reference = patches.view(2, 3, 9, -1).median(dim=2).values.view_as(images)
    assert torch.equal(MedianBlur3()(images), reference)


def test_coarse_dropout_zeroes_the_same_pixels_in_every_channel():
    torch.manual_seed(0)
    out = coarse_dropout(torch.ones(5, 4, 64, 64), p=1.0)
    holes = out == 0
    assert torch.equal(holes, holes[:, :1].expand_as(holes))
    per_sample = holes[:, 0].flatten(1).sum(dim=1)
    assert ((per_sample > 0) & (per_sample <= 250)).all()
    assert torch.equal(coarse_dropout(torch.ones(2, 1, 8, 8), p=0.0), torch.ones(2, 1, 8, 8))


def test_one_of_switched_off_returns_its_input_and_draws_nothing():
    images, points = torch.rand(3, 2, 8, 8), torch.rand(3, 4, 2)
    state = torch.get_rng_state()
    out, moved = augment.distortion(0.0)(images, points)
    assert out is images and moved is points and torch.equal(torch.get_rng_state(), state)
