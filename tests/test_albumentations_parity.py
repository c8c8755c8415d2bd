"""The training augmentation against the solution's library, albumentations 1.4.11, where that is installed.

albumentations is not a dependency, so these tests are skipped unless it is there; to run them:
``pip install albumentations==1.4.11 albucore==0.0.16`` (ideally in a copy of the environment), then
``python -m pytest tests/test_albumentations_parity.py``. Given the same random parameters, the warps and blurs
must give the same pixels; the motion-blur kernels must come out with the same frequencies.
"""

from __future__ import annotations

import random
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from kaggle_utils.training.augment import GaussianBlur3, MotionBlur3
from kaggle_utils.training.warps import GridDistortion, OpticalDistortion, ShiftScaleRotate

A = pytest.importorskip("albumentations")
if A.__version__ != "1.4.11":
    pytest.skip(f"the solution used albumentations 1.4.11, not {A.__version__}", allow_module_level=True)

SIZE = 256


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A smooth (256, 256, 3) float32 picture, so that a geometric difference shows as a pixel difference."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    wave = np.sin(x / 9.0) * np.cos(y / 13.0) * 0.5 + 0.5
    return np.repeat(wave[..., None], 3, axis=-1).astype(np.float32)


def ours(picture: np.ndarray, op: torch.nn.Module, params: torch.Tensor | None = None) -> np.ndarray:
    """``op`` on the picture; a distortion with the given parameters (its sampling grid, as it warps)."""
    images = torch.from_numpy(picture).permute(2, 0, 1)[None]
    out = op(images) if params is None else op.warp(images, params)
    return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("k", [-1.0, -0.5, 0.3, 1.0])
def test_optical_distortion(picture, k):  # cv2's undistort map, its half-pixel shift included
    theirs = A.OpticalDistortion(distort_limit=1.0, p=1.0).apply(picture, k=k, dx=0, dy=0, interpolation=1)
    np.testing.assert_allclose(ours(picture, OpticalDistortion(), torch.tensor([k])), theirs, atol=1e-4)


@pytest.mark.parametrize("steps", [[1.0] * 6, [0.2, 1.8, 1.0, 0.5, 1.5, 1.3], [0.5, 0.9, 1.0, 0.8, 0.9, 1.6]])
def test_grid_distortion(picture, steps):
    theirs = A.GridDistortion(5, 1.0, p=1.0).apply(picture, stepsx=steps, stepsy=steps[::-1], interpolation=1)
    stretch = torch.tensor([steps[:5], steps[::-1][:5]])[None]  # the sixth step is not used at 256 px
    np.testing.assert_allclose(ours(picture, GridDistortion(), stretch), theirs, atol=1e-4)


def test_gaussian_blur(picture):
    theirs = A.GaussianBlur(3, p=1.0).apply(picture, ksize=3, sigma=0)
    np.testing.assert_allclose(ours(picture, GaussianBlur3()), theirs, atol=1e-5)


def test_motion_blur_kernels_have_the_same_frequencies():
    def frequencies(kernels) -> Counter:
        return Counter(tuple(np.round(np.asarray(k, np.float64), 4).ravel()) for k in kernels)

    random.seed(0)
    theirs = frequencies(A.MotionBlur(3, p=1.0).get_params()["kernel"] for _ in range(20000))
    torch.manual_seed(0)
    mine = frequencies(MotionBlur3().draw(20000, torch.device("cpu")).numpy())
    assert mine.keys() == theirs.keys()
    total_variation = sum(abs(mine[k] - theirs[k]) for k in theirs) / 2 / 20000
    assert total_variation < 0.04  # sampling noise over 36 kernels is about 0.02


def test_shift_scale_rotate_gives_their_matrix_and_pixels(picture):
    # from albumentations' draws (x zoom, y zoom, angle, and the shift read off its matrix): the same points move
    # alike and the warps give the same pixels
    transform = A.ShiftScaleRotate(shift_limit=0.15, scale_limit=0.25, rotate_limit=30, p=1.0)
    op = ShiftScaleRotate(shift_limit=0.15, scale_limit=0.25, rotate_limit=30)
    centre = np.full(2, (SIZE - 1) / 2)
    points = np.random.default_rng(0).uniform(0, SIZE - 1, (9, 2))
    for seed in range(5):
        random.seed(seed)
        params = transform.get_params_dependent_on_targets({"image": picture})
        theirs = params["matrix"].params  # (3, 3), source pixel -> output pixel
        shift = theirs[:2, 2] - centre + theirs[:2, :2] @ centre  # A (p - c) + c + t = A p + (c - A c + t)
        assert abs(shift).max() <= 0.15 * SIZE + 1e-3
        mine = torch.tensor(
            [[params["rotate"], params["scale"]["x"], params["scale"]["y"], *(shift / SIZE)]], dtype=torch.float32
        )
        moved = op.warp(torch.zeros(1, 1, SIZE, SIZE), mine, torch.tensor(points[None], dtype=torch.float32))[1]
        expected = points @ theirs[:2, :2].T + theirs[:2, 2]
        np.testing.assert_allclose(moved[0].numpy(), expected, atol=1e-3)
        warped = A.ShiftScaleRotate(p=1.0).apply(picture, **params, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(ours(picture, op, mine), warped, atol=1e-4)
