"""The preprocessing benchmark's plain implementations agree with ours; the inference projection's arithmetic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_utils import bench, infer, tables
from kaggle_utils.config import InferConfig, PreprocessConfig, preset
from kaggle_utils.dicom import Series
from kaggle_utils.paths import Paths


def _case(plane: str) -> tuple[Series, np.ndarray, str]:
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
    return series, points, plane


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


def test_full_ensemble_images_follow_the_presets() -> None:
    gpu = bench.GpuAssumptions()
    assert gpu.h100_ms_per_image == pytest.approx(31 / 225) and gpu.t4_ms_per_image == pytest.approx(8 * 31 / 225)
    assert bench.images_per_series(preset("sp2"), gpu) == 5 * 5 * 9  # the anchor's own shape
    assert bench.images_per_series(preset("fo"), gpu) == pytest.approx(5 * 24 * 9 * (96 / 256) ** 2)
    assert bench.images_per_series(preset("stage1_t1"), gpu) == 8
    fo = su = 5 * 24 * 9 * (96 / 256) ** 2
    sp1, sp2 = 5 * 8 * 9 * (128 / 256) ** 2, 5 * 5 * 9
    images = bench.full_images_per_study({"t1": 1.0, "t2": 2.0}, gpu)
    assert images == pytest.approx({"keypoints": 4 * (8 + 2 * 8), "classify": 4 * (fo + 2 * (sp1 + sp2 + su))})


def test_projection_takes_cpu_stages_as_measured_and_gpu_stages_from_the_anchor() -> None:
    gpu = bench.GpuAssumptions(h100_ms_per_image=1.0, t4_over_h100=0.5)
    seconds = {"read": 2.0, "volume": 1.0, "keypoints": 100.0, "crop": 4.0, "classify": 100.0}
    timing = bench.InferTiming("cpu", 4, seconds)
    series = {"t1": 1.0, "t2": 2.0}
    projection = bench.project(timing, series, gpu, n_studies=3600)
    images = bench.full_images_per_study(series, gpu)
    assert list(projection.per_study) == list(bench.STAGES)
    assert projection.per_study["read"] == 0.5 and projection.per_study["crop"] == 1.0
    assert projection.per_study["classify"] == pytest.approx(images["classify"] * 2.0 / 1000)
    assert projection.total_h == pytest.approx(sum(projection.per_study.values()))  # 3600 studies: s/study = h
    text = bench.format_projection(projection, gpu, series)
    assert "one T4, 9 h limit" in text and "1/2 of an H100" in text and "31 ms / 225 images" in text
    assert "1.00 T1 + 2.00 T2" in text and "measured (cpu)" in text
    timings = bench.format_timings([timing])
    assert "DICOM reading" in timings and timings.splitlines()[-1].split() == ["total", "51.750"]


def test_bench_models_and_the_timer_leave_predictions_unchanged(tiny_data: Path, tmp_path: Path) -> None:
    data = Paths(tiny_data, tmp_path)
    series = tables.series_table(data, "train")
    series = series[series["study_id"] == series["study_id"].iloc[0]]
    paths = Paths(tiny_data, tmp_path / "work")
    bench.write_bench_models(paths, data, series, "smoke")
    models = infer.load_models(paths, [0], torch.device("cpu"))
    args = (paths, series, models, PreprocessConfig(), InferConfig(tta_angles=(0.0, 10.0)))
    timer = infer.StageTimer()
    plain, timed = infer.predict_series_table(*args), infer.predict_series_table(*args, timer=timer)
    for a, b in zip(plain, timed, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert set(timer.seconds) == set(bench.STAGES)
    # One study: the stage-1 heads predict the mean keypoints of its plane, i.e. its own (as far as clamping allows).
    truth = tables.keypoints_table(data, series)
    for series_id in truth["series_id"].unique():
        expected = tables.series_points(truth, series_id).clip(0.01, 0.99)
        assert tables.series_points(plain[0], series_id) == pytest.approx(expected, abs=1e-5)
