"""The preprocessing benchmark's plain implementations agree with ours."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.dev import bench_preprocess as bench
from kaggle_utils.io.dicom import Series


def _case(view: str) -> tuple[Series, np.ndarray, str]:
    rng = np.random.default_rng(0)
    slices = [cv2.resize(rng.random((20, 16), np.float32), (256, 320), interpolation=cv2.INTER_CUBIC) * 900 + 50]
    slices.append(slices[0] * 0.8)
    series = Series(
        slices=slices,
        positions=np.array([[4.0, 0, 0], [0.0, 0, 0]]),
        orientation=np.array([0, 1, 0, 0, 0, -1.0]),
        pixel_spacing=np.ones((2, 2)),
        instance_numbers=np.array([1, 2]),
        description="",
        folder=Path("bench"),
    )
    y = np.linspace(0.3, 0.7, 5)
    points = np.stack([np.c_[np.full(5, 0.4), y + 0.02], np.c_[np.full(5, 0.57), y - 0.02]], axis=1)
    return series, points, view


def test_compare_reports_close_outputs_and_a_table() -> None:
    rows = bench.compare([_case("t1"), _case("t2")], PreprocessConfig())
    assert [r.stage for r in rows] == ["stage 1", "stage 2 t1", "stage 2 t2"]
    assert all(r.ours_per_s > 0 and r.plain_per_s > 0 for r in rows)
    # stage 1 resamples differently (cv2 area vs PIL's antialiased Lanczos); stage 2 takes the solution's steps
    assert rows[0].mad < 1.0 and rows[1].mad < 0.05 and rows[2].mad < 0.05
    table = bench.format_table(rows, 2, 4)
    assert "speed-up" in table and "stage 2 t2" in table


def test_resampled_cases_keep_points_and_agree_at_512_px() -> None:
    cases = bench.resampled([_case("t1"), _case("t2")], 512)
    assert all(shape == (512, 512) for series, _, _ in cases for shape in series.shapes)
    np.testing.assert_array_equal(cases[0][1], _case("t1")[1])
    rows = bench.compare(cases, PreprocessConfig(), repeat=2)
    assert rows[0].mad < 1.0 and rows[1].mad < 0.05 and rows[2].mad < 0.05
    assert "resized to 512^2 px" in bench.format_table(rows, 2, 4, " resized to 512^2 px")
