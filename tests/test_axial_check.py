"""The axial localiser's points checked against the projected sagittal canal point, and named by patient x."""

from __future__ import annotations

import numpy as np

from kaggle_utils.inference.axial_check import DEFAULT_HALF_WIDTH_MM, check_points

SHAPE = (200, 200)  # rows, columns
SPACING = np.array([0.5, 0.5])  # mm
ROWS_TO_LEFT = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # image x runs to patient left (+x)
ROWS_TO_RIGHT = np.array([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # a flipped image: x runs to patient right


def relative(*pixels: tuple[float, float]) -> np.ndarray:
    return np.array(pixels, dtype=float) / 200


def test_a_plausible_pair_near_the_canal_point_is_kept() -> None:
    points, recentred = check_points(
        relative((130, 100), (70, 100)), np.array([100.0, 96.0]), SHAPE, SPACING, ROWS_TO_LEFT
    )
    np.testing.assert_allclose(points, relative((130, 100), (70, 100)))
    assert not recentred


def test_a_pair_far_from_the_canal_point_is_recentred_keeping_its_width() -> None:
    far = relative((190, 160), (130, 160))  # midpoint 40 mm right and 30 mm down of the canal point
    points, recentred = check_points(far, np.array([100.0, 100.0]), SHAPE, SPACING, ROWS_TO_LEFT)
    np.testing.assert_allclose(points * 200, [[130, 100], [70, 100]])
    assert recentred


def test_an_implausible_width_gets_the_default_one() -> None:
    squeezed = relative((101, 100), (99, 100))  # 1 mm apart
    points, recentred = check_points(squeezed, np.array([100.0, 100.0]), SHAPE, SPACING, ROWS_TO_LEFT)
    half = DEFAULT_HALF_WIDTH_MM / SPACING[1]
    np.testing.assert_allclose(points * 200, [[100 + half, 100], [100 - half, 100]])
    assert recentred


def test_left_is_the_point_with_the_larger_patient_x() -> None:
    swapped = relative((70, 100), (130, 100))  # the model named them the other way round
    points, _ = check_points(swapped, np.array([100.0, 100.0]), SHAPE, SPACING, ROWS_TO_LEFT)
    np.testing.assert_allclose(points * 200, [[130, 100], [70, 100]])
    points, _ = check_points(swapped, np.array([100.0, 100.0]), SHAPE, SPACING, ROWS_TO_RIGHT)
    np.testing.assert_allclose(points * 200, [[70, 100], [130, 100]])  # on a flipped image the left is image-left
