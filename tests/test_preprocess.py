"""Stage-1 volumes and stage-2 crops: shapes, windowing, and the crop geometry against a plain implementation
of the solution's formulas (rotate the whole image, crop the box, resize the longest side, pad centred); the
shortcuts that make ours fast (bracketed percentiles, box-only rotation, stacked resizes, cv2 windowing) against
the plain operations they replace."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.io.dicom import Series
from kaggle_utils.preprocessing.intensity import intensity_window, percentiles_of, to_uint8
from kaggle_utils.preprocessing.sagittal import (
    MAX_CV2_CHANNELS,
    box_pixels,
    level_boxes,
    resize_stack,
    rotation_matrix,
    stage1_volume,
    stage2_crops,
)

CFG = PreprocessConfig()


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((height // 16, width // 16)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) * 1000 + 100


def make_series(slices: list[np.ndarray]) -> Series:
    n = len(slices)
    return Series(
        slices=slices,
        positions=np.c_[np.arange(n)[::-1] * 4.0, np.zeros(n), np.zeros(n)],
        orientation=np.array([0, 1, 0, 0, 0, -1.0]),
        pixel_spacing=np.ones((n, 2)),
        instance_numbers=np.arange(1, n + 1),
        description="Sagittal T2/STIR",
        folder=Path("synthetic"),
    )


def t2_points() -> np.ndarray:
    """Five levels of a tilted spine: front point, back point (relative)."""
    y = np.linspace(0.3, 0.7, 5)
    front = np.c_[np.linspace(0.38, 0.42, 5), y + 0.02]
    back = np.c_[np.linspace(0.55, 0.59, 5), y - 0.02]
    return np.stack([front, back], axis=1)


def reference_crop(
    image: np.ndarray, points: np.ndarray, view: str, level: int, t1_height_mult: float = 1.0
) -> np.ndarray:
    """The solution's steps, literally, for one level of one slice (float output before windowing); its T1 crop
    is 1.0 level spacings high each way, ``t1_height_mult`` scales it."""
    h, w = image.shape
    front, back = points[:, 0], points[:, 1]
    if view == "t2":
        x_pct = 0.75 * np.median(back[:, 0] - front[:, 0])
        y_pct = 1.3 * np.median(np.diff(back[:, 1]))
        a, b = front[level] * [w, h], back[level] * [w, h]
        angle = np.degrees(np.arctan2(-(b[1] - a[1]), b[0] - a[0]))
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), -angle, 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT_101)
        bx, by = matrix[:, :2] @ b + matrix[:, 2]
        x0, y0 = int(bx) - 0.5 * w * x_pct, int(by)
    else:
        y_pct = t1_height_mult * np.median(np.diff(front[:, 1]))
        x_pct = 1.25 * y_pct
        a, b = front[level] * [w, h], back[level] * [w, h]
        x0, y0 = (a + b) / 2
    left, right = max(0, int(x0 - w * x_pct)), min(w, int(x0 + w * x_pct))
    top, bottom = max(0, int(y0 - h * y_pct)), min(h, int(y0 + h * y_pct))
    crop = image[top:bottom, left:right]
    scale = 256 / max(crop.shape)
    new_w, new_h = round(crop.shape[1] * scale), round(crop.shape[0] * scale)
    crop = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)
    out = np.zeros((256, 256), np.float32)
    py, px = (256 - new_h) // 2, (256 - new_w) // 2
    out[py : py + new_h, px : px + new_w] = crop
    return out


@pytest.mark.parametrize("t1_height_mult", [CFG.t1_height_mult, 1.0])  # the default and the solution's T1 crop
@pytest.mark.parametrize("view", ["t2", "t1"])
@pytest.mark.parametrize("shape", [(384, 384), (320, 448)])
def test_crops_match_the_plain_implementation(view, shape, t1_height_mult):
    image = smooth_image(*shape)
    points = t2_points()
    cfg = dataclasses.replace(CFG, t1_height_mult=t1_height_mult)
    crops = stage2_crops(make_series([image, image * 0.9]), points, view, cfg)
    assert crops.shape == (5, 2, 256, 256) and crops.dtype == np.uint8
    window = (
        float(np.percentile(np.r_[image.ravel(), image.ravel() * 0.9], 1)),
        float(np.percentile(np.r_[image.ravel(), image.ravel() * 0.9], 99)),
    )
    for level in range(5):
        expected = to_uint8(reference_crop(image, points, view, level, t1_height_mult), window).astype(float)
        ours = crops[level, 0].astype(float)
        inside = expected > 0
        # the same interpolation steps: equal but for cv2's fixed-point warp coordinates (T2) and rare roundings
        assert np.abs(ours - expected).mean() < 0.05
        assert (ours > 0).mean() == pytest.approx(inside.mean(), abs=0.002)  # same padded region


def test_t2_box_follows_the_formulas():
    points = t2_points()
    box = level_boxes(points, "t2", 400, 400, CFG)[2]
    disc = np.median(points[:, 1, 0] - points[:, 0, 0]) * 400
    spacing = np.median(np.diff(points[:, 1, 1])) * 400
    assert box.right - box.left == pytest.approx(1.5 * disc, abs=2)
    assert box.bottom - box.top == pytest.approx(2.6 * spacing, abs=2)
    assert box.angle == pytest.approx(-np.degrees(np.arctan2(0.04, 0.17)), abs=0.01)


def test_t1_box_spaces_levels_by_the_midpoints_of_the_two_foramina():
    y = np.linspace(0.3, 0.7, 5)
    left = np.c_[np.full(5, 0.50), y]
    right = np.c_[np.full(5, 0.52), y]
    # a tilted spine: the left foramen of each level sits lower than the right one, the more so the lower the
    # level, and which of the two is in front (smaller x) changes from level to level
    tilt = np.array([0.0, 0.01, 0.02, 0.03, 0.04])
    left[:, 1] += tilt
    right[:, 1] -= tilt
    right[:, 0] = [0.52, 0.48, 0.52, 0.48, 0.52]
    solution = dataclasses.replace(CFG, t1_height_mult=1.0)
    for cfg in (CFG, solution):
        boxes = level_boxes(np.stack([left, right], axis=1), "t1", 400, 400, cfg)
        half_height = cfg.t1_height_mult * 0.1 * 400
        for box in boxes[1:4]:
            assert box.bottom - box.top == pytest.approx(2 * half_height, abs=2)
            assert box.right - box.left == pytest.approx(2 * 1.25 * half_height, abs=2)


def test_the_default_t1_crop_frames_its_own_foramen_and_not_the_neighbours():
    """The solution's T1 crop reaches the next levels' foramina (one level spacing up and down); the default crop
    stops half-way, so the narrowing it shows is its own level's."""
    y = np.linspace(0.3, 0.7, 5)
    points = np.stack([np.c_[np.full(5, 0.5), y], np.c_[np.full(5, 0.5), y]], axis=1)
    neighbours = 0.1 * 400
    own = level_boxes(points, "t1", 400, 400, CFG)[2]
    wide = level_boxes(points, "t1", 400, 400, dataclasses.replace(CFG, t1_height_mult=1.0))[2]
    assert own.top > 0.4 * 400 - neighbours + 10 and own.bottom < 0.6 * 400 + neighbours - 10
    assert wide.top <= 0.4 * 400 and wide.bottom >= 0.6 * 400


def test_stage1_volume_resizes_every_slice_and_windows():
    slices = [smooth_image(320, 256, seed) for seed in range(3)]
    volume = stage1_volume(make_series(slices), CFG)
    assert volume.shape == (3, 256, 256) and volume.dtype == np.uint8
    assert volume.min() == 0 and volume.max() == 255


def test_constant_series_becomes_black_not_nan():
    volume = stage1_volume(make_series([np.full((64, 64), 7.0)] * 2), CFG)
    assert not volume.any()


def test_slices_of_different_sizes_are_resized_and_cropped_per_size():
    small, large = smooth_image(320, 256, 1), smooth_image(384, 448, 2)
    series = make_series([small, large, small])
    volume = stage1_volume(series, CFG)
    assert volume.shape == (3, 256, 256)
    np.testing.assert_array_equal(volume[0], volume[2])
    crops = stage2_crops(series, t2_points(), "t2", CFG)
    assert crops.shape == (5, 3, 256, 256)
    np.testing.assert_array_equal(crops[:, 0], crops[:, 2])
    # each size is cropped from its own geometry: the same relative box, so similar fill, different pixels
    assert (crops[:, 1] > 0).mean() > 0.3 and not np.array_equal(crops[:, 0], crops[:, 1])


def _degenerate(kind: str) -> np.ndarray:
    points = t2_points()
    if kind == "nan":
        points[2, 1] = np.nan
    elif kind == "inf":
        points[2, 0, 0] = np.inf
    elif kind == "off_image":
        points[2] += [3.0, -2.0]  # far outside: the box clamps to nothing
    elif kind == "equal":
        points[2, 1] = points[2, 0]  # front == back
    return points


@pytest.mark.parametrize("view", ["t2", "t1"])
@pytest.mark.parametrize("kind", ["nan", "inf", "off_image"])
def test_bad_keypoints_of_one_level_leave_that_level_black(view, kind):
    good = stage2_crops(make_series([smooth_image(320, 320)] * 2), t2_points(), view, CFG)
    with pytest.warns(UserWarning, match=r"synthetic: .*levels \[2\]"):
        crops = stage2_crops(make_series([smooth_image(320, 320)] * 2), _degenerate(kind), view, CFG)
    assert not crops[2].any()
    for level in (0, 1, 3, 4):  # the other levels keep their geometry (the scale comes from the valid levels)
        assert np.abs(crops[level].astype(float) - good[level]).mean() < 1.0


def test_two_equal_points_of_a_level_do_not_crash():
    crops = stage2_crops(make_series([smooth_image(320, 320)]), _degenerate("equal"), "t2", CFG)
    assert crops.shape == (5, 1, 256, 256) and crops[2].any()


@pytest.mark.parametrize("view", ["t2", "t1"])
def test_all_points_equal_or_nan_give_black_crops_with_a_warning(view):
    series = make_series([smooth_image(320, 320)])
    for points in (np.full((5, 2, 2), 0.5), np.full((5, 2, 2), np.nan)):
        with pytest.warns(UserWarning, match=r"synthetic: empty crop at levels \[0, 1, 2, 3, 4\]"):
            crops = stage2_crops(series, points, view, CFG)
        assert crops.shape == (5, 1, 256, 256) and not crops.any()


# --- the fast paths against the plain operations they replace ------------------------------------
@pytest.mark.parametrize(
    "kind", ["uniform", "integers_with_ties", "mostly_background", "constant", "small", "misleading_sample"]
)
def test_percentiles_equal_numpy(kind):
    rng = np.random.default_rng(1)
    values = {
        "uniform": rng.random(300_000, np.float32) * 1000,
        "integers_with_ties": rng.integers(0, 40, 300_000).astype(np.float32),
        "mostly_background": np.where(rng.random(300_000) < 0.6, 0, rng.normal(800, 200, 300_000)).astype(np.float32),
        "constant": np.full(300_000, 7.0, np.float32),
        "small": rng.random(500, np.float32),
        # every 37th value (what the sample sees) is huge: the brackets miss and the full selection takes over
        "misleading_sample": np.where(np.arange(300_000) % 37 == 0, 1e6, rng.random(300_000)).astype(np.float32),
    }[kind]
    for q in [(1.0, 99.0), (0.0, 100.0), (0.5, 50.0, 99.9)]:
        expected = np.percentile(values, q).tolist()
        assert percentiles_of([values], q) == pytest.approx(expected, rel=1e-12, abs=0)
        # split into arrays of different sizes (slices): the same values together
        assert percentiles_of(np.split(values, [1000, 1500]), q) == pytest.approx(expected, rel=1e-12, abs=0)


def test_intensity_window_covers_all_slices_of_all_sizes():
    slices = [smooth_image(320, 256, 0), smooth_image(384, 448, 1) * 2]
    expected = np.percentile(np.r_[slices[0].ravel(), slices[1].ravel()], (1, 99))
    assert intensity_window(slices, (1, 99)) == pytest.approx(tuple(expected), rel=1e-12)


def test_to_uint8_matches_the_numpy_formula():
    image = np.random.default_rng(2).normal(500, 300, (64, 48, 5)).astype(np.float32)
    low, high = 100.0, 900.0
    expected = np.clip((image - low) * (255 / (high - low)), 0, 255).round()
    ours = to_uint8(image, (low, high))
    assert ours.shape == image.shape and ours.dtype == np.uint8
    diff = np.abs(ours - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding of exact .5 cases only
    assert to_uint8(image[:, :, 0].ravel(), (low, high)).shape == (64 * 48,)


@pytest.mark.parametrize("n_slices", [5, MAX_CV2_CHANNELS + 3])
@pytest.mark.parametrize("interpolation", [cv2.INTER_LANCZOS4, cv2.INTER_LINEAR])
def test_stacked_resize_equals_resizing_slice_by_slice(n_slices, interpolation):
    stack = np.random.default_rng(3).random((40, 30, n_slices), np.float32)
    ours = resize_stack(stack, (96, 128), interpolation)
    expected = np.stack(
        [
            cv2.resize(np.ascontiguousarray(stack[:, :, i]), (96, 128), interpolation=interpolation)
            for i in range(n_slices)
        ],
        axis=-1,
    )
    assert ours.shape == (128, 96, n_slices)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)  # vectorised paths may differ in the last bit


def test_box_only_rotation_equals_rotating_the_whole_slice_then_cropping():
    image = smooth_image(320, 448)
    height, width = image.shape
    value_range = float(image.max() - image.min())
    for box in level_boxes(t2_points(), "t2", width, height, CFG):
        matrix = rotation_matrix(box.angle, np.array([(width - 1) / 2, (height - 1) / 2]))
        whole = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT_101
        )
        expected = whole[box.top : box.bottom, box.left : box.right]
        ours = box_pixels(image, box)
        assert ours.shape == expected.shape
        # cv2 rounds warp coordinates to 1/32 px from a different origin: rare, tiny differences
        assert np.abs(ours - expected).mean() < 1e-4 * value_range
        assert np.abs(ours - expected).max() < 1e-2 * value_range


@pytest.mark.parametrize("view", ["t2", "t1"])
def test_a_given_window_gives_the_same_arrays(view):
    series = make_series([smooth_image(320, 320, seed) for seed in range(3)])
    window = intensity_window(series.slices, CFG.percentiles)
    np.testing.assert_array_equal(stage1_volume(series, CFG, window), stage1_volume(series, CFG))
    crops = stage2_crops(series, t2_points(), view, CFG)
    np.testing.assert_array_equal(stage2_crops(series, t2_points(), view, CFG, window), crops)
    assert not np.array_equal(stage2_crops(series, t2_points(), view, CFG, (window[0], window[1] * 2)), crops)


def test_stage1_volume_equals_per_slice_resize_then_numpy_window():
    slices = [smooth_image(320, 256, seed) for seed in range(3)] + [smooth_image(200, 180, 4)]
    low, high = intensity_window(slices, CFG.percentiles)
    expected = []
    for image in slices:
        shrink = image.shape[0] >= 256 and image.shape[1] >= 256
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4
        expected.append(cv2.resize(image, (256, 256), interpolation=interpolation))
    expected = np.clip((np.stack(expected) - low) * (255 / (high - low)), 0, 255).round()
    diff = np.abs(stage1_volume(make_series(slices), CFG) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
