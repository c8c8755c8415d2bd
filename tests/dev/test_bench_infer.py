"""The inference benchmark: the T4 projection's arithmetic, its models and its GPU columns (run on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from kaggle_utils.core.config import InferConfig, PreprocessConfig
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import preset
from kaggle_utils.dev import bench_infer as bench
from kaggle_utils.inference import axial_branch, ensemble, run
from kaggle_utils.io import competition, tables


def test_t4_throughput_follows_the_datasheets() -> None:
    """About 1/13 of an H100 in fp16 and 1/36 in fp32: between the compute-peak and the bandwidth ratios."""
    fp16, fp32 = (bench.throughput_ratio(bench.T4, bench.H100, p) for p in ("fp16", "fp32"))
    assert 1 / fp16 == pytest.approx(12.6, abs=0.05) and 1 / fp32 == pytest.approx(35.8, abs=0.05)
    bandwidth = bench.T4.bandwidth_gbs / bench.H100.bandwidth_gbs
    assert bench.T4.fp16_tflops / bench.H100.fp16_tflops < fp16 < bandwidth
    assert bench.GpuAssumptions("fp32").t4_ms_per_image == pytest.approx(31 / 225 / fp32)


def test_full_ensemble_images_follow_the_presets() -> None:
    gpu = bench.GpuAssumptions()
    assert gpu.h100_ms_per_image == pytest.approx(31 / 225) and gpu.label == "1x T4 fp16"
    assert bench.images_per_series(preset("sp2"), gpu) == 5 * 5 * 9  # the anchor's own shape
    assert bench.images_per_series(preset("fo"), gpu) == pytest.approx(5 * 24 * 9 * (96 / 256) ** 2)
    assert bench.images_per_series(preset("stage1_t1"), gpu) == 8
    fo = su = 5 * 24 * 9 * (96 / 256) ** 2
    sp1, sp2 = 5 * 8 * 9 * (128 / 256) ** 2, 5 * 5 * 9
    images = bench.full_images_per_study({"t1": 1.0, "t2": 2.0}, gpu)
    sagittal = {"keypoints": 4 * (8 + 2 * 8), "classify": 4 * (fo + 2 * (sp1 + sp2 + su))}
    assert images == pytest.approx({**sagittal, "axial_models": 0.0})
    # an axial level: the localiser's 3 frames at 256 px, the classifier's 3 crops x 5 slices x 9 TTA at 128 px
    assert bench.images_per_series(preset("ax"), gpu) == pytest.approx(3 * 5 * 9 * (128 / 256) ** 2)
    with_axial = bench.full_images_per_study({"t1": 1.0, "t2": 2.0, "axial": 4.5}, gpu)
    assert with_axial == pytest.approx({**sagittal, "axial_models": 4 * 4.5 * (3 + 3 * 5 * 9 / 4)})


def test_projection_takes_cpu_stages_as_measured_and_splits_gpu_stages_over_the_cards() -> None:
    one, two = bench.GpuAssumptions(h100_ms_per_image=1.0), bench.GpuAssumptions(h100_ms_per_image=1.0, cards=2)
    seconds = {"read": 2.0, "volume": 1.0, "keypoints": 100.0, "crop": 4.0, "classify": 100.0, "axial_read": 1.0}
    timing = bench.InferTiming("cpu", 4, seconds)
    series = {"t1": 1.0, "t2": 2.0, "axial": 4.5}
    projections = [bench.project(timing, series, gpu, n_studies=3600) for gpu in (one, two)]
    images = bench.full_images_per_study(series, one)
    assert list(projections[0].per_study) == list(bench.STAGES)
    assert projections[0].per_study["read"] == 0.5 and projections[1].per_study["crop"] == 1.0
    assert projections[0].per_study["classify"] == pytest.approx(images["classify"] * one.t4_ms_per_image / 1000)
    assert projections[1].per_study["classify"] == pytest.approx(projections[0].per_study["classify"] / 2)
    assert projections[0].total_h == pytest.approx(sum(projections[0].per_study.values()))  # 3600 studies: s = h
    text = bench.format_projection(projections, [one, two], series)
    assert "9 h limit" in text and "1/12.6 in fp16, 1/35.8 in fp32" in text and "31 ms / 225 images" in text
    assert projections[0].per_study["axial_read"] == 0.25
    axial_seconds = images["axial_models"] * one.t4_ms_per_image / 1000
    assert projections[0].per_study["axial_models"] == pytest.approx(axial_seconds)
    assert "4.50 axial levels + 1.00 T1 series + 2.00 T2 series" in text
    assert text.splitlines()[-1].split()[:3] == ["share", "of", "the"]
    header = next(line for line in text.splitlines() if line.startswith("stage (s/study)"))
    assert header.split()[2:] == ["1x", "T4", "fp16", "2x", "T4", "fp16"]
    timings = bench.format_timings([timing, bench.InferTiming("cuda fp32", 4, seconds, peak_gb=9.25)])
    assert "DICOM reading" in timings and timings.splitlines()[-2].split() == ["total", "52.000", "52.000"]
    assert timings.splitlines()[-1].split()[-2:] == ["-", "9.25"]


def test_bench_models_and_the_timer_leave_predictions_unchanged(tiny_data: Path, tmp_path: Path) -> None:
    data = Paths(tiny_data, tmp_path)
    series = competition.series_table(data, "train")
    series = series[series["study_id"] == series["study_id"].iloc[0]]
    paths = Paths(tiny_data, tmp_path / "work")
    bench.write_bench_models(paths, data, series, "smoke")
    models = ensemble.load_models(paths, [0], torch.device("cpu"))
    args = (paths, models, PreprocessConfig(), InferConfig(tta_angles=(0.0, 10.0)))
    axial = axial_branch.axial_series_ids(paths, "train")
    assert series["study_id"].iloc[0] in axial
    timer = run.StageTimer()
    plain = run.Inference(*args).predict_table(series, axial)
    timed = run.Inference(*args, timer=timer).predict_table(series, axial)
    for a, b in zip(plain, timed, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert set(timer.seconds) == set(bench.STAGES) and "ax" in set(plain[1]["preset"])
    # One study: the stage-1 heads predict the mean keypoints of its plane, i.e. its own (as far as clamping allows).
    truth = tables.keypoints_table(data, series)
    for series_id in truth["series_id"].unique():
        expected = tables.series_points(truth, series_id).clip(0.01, 0.99)
        assert tables.series_points(plain[0], series_id) == pytest.approx(expected, abs=1e-5)


def test_the_gpu_columns_time_every_fold_in_fp32_and_under_autocast(tiny_data: Path, tmp_path: Path) -> None:
    """On the CPU here (autocast is fp32 there): the ensemble of two folds, the second an fp16 copy of the first."""
    data = Paths(tiny_data, tmp_path)
    series = competition.series_table(data, "train")
    series = series[series["study_id"] == series["study_id"].iloc[0]]
    paths = Paths(tiny_data, tmp_path / "ensemble")
    written = bench.write_bench_models(paths, data, series, "smoke", n_folds=2)
    assert len(written) == 16 and {json.loads(p.with_suffix(".json").read_text())["fold"] for p in written} == {0, 1}
    models = ensemble.load_models(paths, None, torch.device("cpu"))
    assert {len(bank) for bank in (*models.stage1.values(), *models.stage2.values())} == {2}
    fp32 = bench.in_precision(models, amp=False)
    assert all(not m.cfg.amp and not m.predictor.cfg.amp for bank in fp32.stage2.values() for m in bank)
    timings = bench.gpu_timings(paths, series, torch.device("cpu"), PreprocessConfig(), InferConfig(tta_angles=(0.0,)))
    assert [t.device for t in timings] == ["cpu fp32", "cpu autocast"]
    assert all(set(t.seconds) == set(bench.STAGES) and t.peak_gb is None for t in timings)
