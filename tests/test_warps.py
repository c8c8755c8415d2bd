"""The geometric warps: shift-scale-rotate, optical and grid distortion as albumentations draws and applies them,
with the keypoints carried along."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from keypoint_images import blobs, peaks_near
from kornia.geometry.transform import get_affine_matrix2d, warp_affine

from kaggle_utils.core import presets
from kaggle_utils.training import warps
from kaggle_utils.training.warps import GridDistortion, OpticalDistortion, ShiftScaleRotate


def test_affine_scales_each_axis_independently_as_shift_scale_rotate():
    # albumentations 1.4.11's ShiftScaleRotate is an Affine with keep_ratio=False: x and y zooms are two draws.
    cfg = presets.FULL_PRESETS["fo"]
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
