"""Batch augmentation: keypoints follow the image, all channels of a sample share the geometry, TTA order."""

from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import nn

from kaggle_utils import augment, config, warps
from kaggle_utils.augment import (
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
from kaggle_utils.resample import rotate_resize
from kaggle_utils.warps import GridDistortion, OpticalDistortion, ShiftScaleRotate


def blobs(keypoints: torch.Tensor, size: int, sigma: float = 2.0) -> torch.Tensor:
    """(B, N, size, size): channel k holds one Gaussian blob centred on keypoint k (pixel x, y)."""
    grid = torch.arange(size, dtype=torch.float32)
    dx = grid[None, None, None, :] - keypoints[..., 0, None, None]
    dy = grid[None, None, :, None] - keypoints[..., 1, None, None]
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))


def peaks_near(images: torch.Tensor, points: torch.Tensor, radius: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, 2) pixel (x, y) and (B, C) value of each channel's maximum within ``radius`` of its point.

    A window rather than the whole image: zooming out with reflection padding shows mirrored blob copies.
    """
    size = images.shape[-1]
    where, value = torch.zeros_like(points), torch.zeros(points.shape[:2])
    for b, c in torch.cartesian_prod(torch.arange(points.shape[0]), torch.arange(points.shape[1])).tolist():
        x0, y0 = (int(v.round().clamp(radius, size - 1 - radius)) - radius for v in points[b, c])
        window = images[b, c, y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        value[b, c], flat = window.max(), int(window.argmax())
        where[b, c] = torch.tensor([x0 + flat % window.shape[1], y0 + flat // window.shape[1]], dtype=torch.float32)
    return where, value


@pytest.mark.parametrize("out_size", [128, 64])
def test_stage1_keypoints_follow_the_image(out_size, monkeypatch):
    # Brightness/contrast can clip a blob flat; the test is about geometry, so it is switched off here.
    monkeypatch.setattr(augment, "brightness_contrast", lambda images: images)
    torch.manual_seed(0)
    cfg = dataclasses.replace(config.FULL_PRESETS["stage1_t2"], img_size=out_size, distort_p=1.0)
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
    cfg = dataclasses.replace(config.FULL_PRESETS["sp1"], img_size=32)
    aug = Stage2Augment(cfg)
    aug.blur_or_noise.ops[3] = nn.Identity()  # noise is drawn per pixel and channel, on purpose
    frame = torch.rand(1, 1, 64, 64)
    out = aug(frame.expand(6, 10, 64, 64).contiguous())
    assert out.shape == (6, 10, 32, 32) and out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # parameters are drawn per sample


def test_affine_scales_each_axis_independently_as_shift_scale_rotate():
    # albumentations 1.4.11's ShiftScaleRotate is an Affine with keep_ratio=False: x and y zooms are two draws.
    cfg = config.FULL_PRESETS["fo"]
    torch.manual_seed(0)
    angle, zoom_x, zoom_y, shift_x, shift_y = ShiftScaleRotate.from_config(cfg).draw(4000, torch.device("cpu")).T
    zoom, shift = torch.stack([zoom_x, zoom_y], dim=1), torch.stack([shift_x, shift_y], dim=1)
    assert zoom.min() >= 1 - cfg.scale_limit and zoom.max() <= 1 + cfg.scale_limit
    assert abs(torch.corrcoef(zoom.T)[0, 1]) < 0.05 and (zoom[:, 0] - zoom[:, 1]).abs().max() > 0.4
    assert angle.abs().max() <= cfg.rotate_limit and angle.abs().max() > 0.95 * cfg.rotate_limit
    assert shift.abs().max() <= cfg.shift_limit and shift.abs().max() > 0.95 * cfg.shift_limit


def test_shift_scale_rotate_is_kornias_affine_of_the_same_draws():
    # kornia's RandomAffine matrix (scale, rotate about ((W-1)/2, (H-1)/2), shift in pixels) and warp on a
    # non-square image; keypoints go where kornia's matrix sends them
    h, w = 24, 40
    op = ShiftScaleRotate(shift_limit=0.15, scale_limit=0.25, rotate_limit=30)
    torch.manual_seed(0)
    params = op.draw(6, torch.device("cpu"))
    angle, zoom, shift = params[:, 0], params[:, 1:3], params[:, 3:] * torch.tensor([w, h])
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).expand(6, 2)
    matrix = get_affine_matrix2d(shift, centre, zoom, angle)
    images = torch.rand(6, 3, h, w)
    theirs = warp_affine(images, matrix[:, :2], (h, w), padding_mode="reflection", align_corners=True)
    points = torch.rand(6, 7, 2) * torch.tensor([w - 1, h - 1])
    warped, moved = op.warp(images, params, points)
    torch.testing.assert_close(warped, theirs, atol=1e-4, rtol=0)
    expected = points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]
    torch.testing.assert_close(moved, expected, atol=1e-4, rtol=0)


def test_one_of_applies_each_op_to_the_samples_that_drew_it():
    torch.manual_seed(0)
    images = torch.rand(64, 2, 4, 4)
    out = OneOf([VerticalFlip(), nn.Identity()], p=0.5)(images)
    flipped = (out == images.flip(-2)).flatten(1).all(dim=1)
    kept = (out == images).flatten(1).all(dim=1)
    assert (flipped | kept).all() and 8 < flipped.sum() < 26  # about a quarter flipped


def test_stage2_runs_under_autocast():
    cfg = dataclasses.replace(config.FULL_PRESETS["sp1"], img_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Stage2Augment(cfg)(torch.rand(2, 4, 32, 32))
    assert out.shape == (2, 4, 16, 16) and out.dtype == torch.float32


def test_optical_distortion_with_zero_limit_shifts_by_cv2s_half_pixel():
    images = torch.rand(2, 3, 20, 24)
    # the map samples every pixel half a pixel down and right (reflect-101 past the last one)
    half_pixel = F.avg_pool2d(F.pad(images, (0, 1, 0, 1), mode="reflect"), 2, stride=1)
    assert torch.allclose(OpticalDistortion(limit=0.0)(images), half_pixel, atol=1e-5)


def _sample(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A (B, H, W, 2) sampling grid read at normalised points (B, K, 2), bilinearly."""
    values = F.grid_sample(field.permute(0, 3, 1, 2), points[:, None], mode="bilinear", align_corners=True)
    return values[:, :, 0].transpose(1, 2)


def _stretches(*stretches: list[float]) -> torch.Tensor:
    """GridDistortion parameters (B, 2, 5): the x axis's cells stretched so, the y axis's in reverse order."""
    stretch = torch.tensor(stretches)
    return torch.stack([stretch, stretch.flip(1)], dim=1)


DISTORTIONS = {
    "optical": (OpticalDistortion(), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])),
    "grid": (
        GridDistortion(),
        # no stretch, three that span the image, one zooming out (sum 6), one zooming in (sum 4.1)
        _stretches(
            [1, 1, 1, 1, 1],
            [0.2, 1.8, 1, 0.5, 1.5],
            [1.9, 0.3, 0.6, 1.2, 1],
            [1, 1, 2, 1, 1],
            [0.5, 0.9, 1, 0.8, 0.9],
        ),
    ),
}


@pytest.mark.parametrize("name", DISTORTIONS)
def test_distortions_move_a_keypoint_to_where_its_source_is_shown(name):
    op, params = DISTORTIONS[name]
    torch.manual_seed(1)
    source = torch.rand(len(params), 12, 2) * 1.2 - 0.6  # normalised, inside the image
    moved = op.move(params, source, 257, 257)
    assert (moved - source).abs().max() > 0.02  # the warp does move points
    # the output pixel at the moved position samples the source point (bilinear reading of the grid)
    assert torch.allclose(_sample(op.grid(params, 257, 257), moved), source, atol=2e-3)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_distortions_carry_keypoints_with_the_image(name, monkeypatch):
    op, params = DISTORTIONS[name]
    monkeypatch.setattr(op, "draw", lambda b, device: params)
    torch.manual_seed(2)
    keypoints = 44 + 40 * torch.rand(len(params), 10, 2)  # pixels of a 128-px image
    images, moved = op(blobs(keypoints, 128), keypoints)
    where, value = peaks_near(images, moved)
    assert (where - moved).norm(dim=-1).max() < 1.5 and value.min() > 0.5


def test_optical_barrel_pushes_unseen_keypoints_past_the_fold():
    # k = -1 shows only the source within radius ~0.69 of the centre; a point beyond it cannot stay inside.
    moved = OpticalDistortion().move(torch.tensor([-1.0]), torch.tensor([[[0.9, 0.0], [0.0, -0.8]]]), 256, 256)
    assert moved[0, 0, 0] > 0.97 and moved[0, 1, 1] < -0.97
    assert moved[0, 0, 1].abs() < 0.02 and moved[0, 1, 0].abs() < 0.02  # along their rays


@pytest.mark.parametrize("k", [-1.0, -0.4, 0.3, 1.0])
def test_optical_distortion_is_cv2s_undistort_map_as_albumentations_asks_for_it(k):
    h, w = 40, 56  # not square: each axis has its own focal length
    camera = np.array([[w, 0, w * 0.5], [0, h, h * 0.5], [0, 0, 1]], np.float32)
    coefficients = np.array([k, k, 0, 0, 0], np.float32)
    map_x, map_y = cv2.initUndistortRectifyMap(camera, coefficients, None, None, (w, h), cv2.CV_32FC1)
    ours = warps._pixels(OpticalDistortion().grid(torch.tensor([k]), h, w), h, w)[0]
    np.testing.assert_allclose(ours[..., 0].numpy(), map_x, atol=2e-3)
    np.testing.assert_allclose(ours[..., 1].numpy(), map_y, atol=2e-3)


def _albumentations_axis(stretch: list[float], n: int, steps: int = 5) -> np.ndarray:
    """albumentations 1.4.11's source pixel of each of n output pixels along one axis, written as its loop: cell i
    is ``np.linspace(prev, prev + width * stretch[i], width)``, and the remainder runs from there to n."""
    width, prev = n // steps, 0.0
    source = np.zeros(n)
    for i in range(steps + 1):
        start, end = i * width, min(i * width + width, n)
        stop = n if i * width + width > n else prev + width * stretch[i]
        source[start:end] = np.linspace(prev, stop, end - start)
        prev = stop
    return source


@pytest.mark.parametrize("n", [256, 37, 128])  # remainders of 1, 2 and 3 pixels
def test_grid_distortion_is_albumentations_map(n):
    stretch = torch.tensor([[[0.2, 1.8, 1.0, 0.5, 1.5], [1.9, 0.3, 0.6, 1.2, 1.0]]])
    source = warps._pixels(GridDistortion().grid(stretch, n, n), n, n)[0]  # (n, n, 2) pixels
    np.testing.assert_allclose(source[0, :, 0], _albumentations_axis(stretch[0, 0].tolist(), n), atol=1e-3)
    np.testing.assert_allclose(source[:, 0, 1], _albumentations_axis(stretch[0, 1].tolist(), n), atol=1e-3)


def test_grid_distortion_puts_points_it_does_not_show_past_the_far_edge():
    # zooming in (stretches sum to 4.1) shows the source up to 0.82 n; zooming out (sum 6) up to 1.2 n
    stretch = torch.tensor([[[0.5, 0.9, 1.0, 0.8, 0.9]] * 2, [[1.0, 1.0, 2.0, 1.0, 1.0]] * 2])
    n = 256  # a remainder of 1 pixel, which shows where the cells end

    def moved(source: list[float], size: int) -> torch.Tensor:
        points = warps._normalised(torch.tensor(source)[:, None, None].expand(-1, 1, 2), size, size)
        return warps._pixels(GridDistortion().move(stretch, points, size, size), size, size)[:, 0, 0]

    assert (moved([0.9 * (n - 1), 1.3 * (n - 1)], n) > n - 1).all()
    # a remainder of 2 pixels shows the source from where the cells end to n (zooming out: back to n)
    n = 37
    inside, past = moved([0.9 * (n - 1), 1.3 * (n - 1)], n)
    assert 35 <= inside <= 36 and past > 36


def test_grid_distortion_stretches_are_not_rescaled_and_keep_the_top_left_corner():
    # albumentations 1.4.11's default (normalized=False): the source shown ends at the mean stretch (mean 1, sd
    # sqrt(1 / 3) / sqrt(5) over five cells), so the image zooms in or out, from the top-left pixel.
    torch.manual_seed(0)
    means = GridDistortion().draw(4000, torch.device("cpu")).mean(dim=-1)
    assert abs(means.mean() - 1) < 0.02 and abs(means.std() - (1 / 15) ** 0.5) < 0.01
    images = torch.rand(4, 2, 32, 32)
    assert torch.allclose(GridDistortion()(images)[..., 0, 0], images[..., 0, 0], atol=1e-5)


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


def test_rotate_resize_is_sample_major_and_rotates_counter_clockwise():
    images = torch.rand(2, 3, 17, 17)
    out = rotate_resize(images, [0.0, 90.0], 17)
    assert out.shape == (4, 3, 17, 17)
    assert torch.allclose(out[0], images[0], atol=1e-6) and torch.allclose(out[2], images[1], atol=1e-6)
    assert torch.allclose(out[1], torch.rot90(images[0], 1, dims=(-2, -1)), atol=1e-4)
    assert torch.allclose(out[3], torch.rot90(images[1], 1, dims=(-2, -1)), atol=1e-4)


def test_rotate_resize_output_size():
    out = rotate_resize(torch.rand(3, 5, 64, 64), [0.0, -15.0, 15.0], 24)
    assert out.shape == (9, 5, 24, 24) and ((out >= 0) & (out <= 1)).all()


def test_one_of_switched_off_returns_its_input_and_draws_nothing():
    images, points = torch.rand(3, 2, 8, 8), torch.rand(3, 4, 2)
    state = torch.get_rng_state()
    out, moved = augment.distortion(0.0)(images, points)
    assert out is images and moved is points and torch.equal(torch.get_rng_state(), state)
