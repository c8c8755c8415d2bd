"""Training crops with stage-1 error: the drawn keypoints, the cached crop sets, the dataset reading them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import preset
from kaggle_utils.io.dicom import read_series
from kaggle_utils.io.tables import load_table, points_by_series
from kaggle_utils.preprocessing.intensity import intensity_window
from kaggle_utils.preprocessing.sagittal import stage2_crops
from kaggle_utils.training import stage1_error, train
from kaggle_utils.training.data import CropDataset
from kaggle_utils.training.tasks import keypoint_frame

OFFSET = 0.03  # relative error of every point of the fake stage-1 predictions


def test_each_series_draws_its_own_error_first_then_others_deterministically() -> None:
    truth = {s: np.full((5, 2, 2), 0.5) for s in (1, 2, 3)}
    errors = {1: np.full((5, 2, 2), 0.01), 2: np.full((5, 2, 2), -0.02)}
    drawn = stage1_error.drawn_points(truth, errors, draws=3, seed=7)
    assert [len(v) for v in drawn.values()] == [3, 3, 3]
    assert np.allclose(drawn[1][0], 0.51) and np.allclose(drawn[2][0], 0.48)  # its own OOF prediction first
    for sets in drawn.values():
        for points in sets:  # every draw is the truth plus one whole error field
            assert any(np.allclose(points, 0.5 + e) for e in errors.values())
    again = stage1_error.drawn_points(truth, errors, draws=3, seed=7)
    assert all(np.array_equal(a, b) for s in truth for a, b in zip(drawn[s], again[s], strict=True))
    clipped = stage1_error.drawn_points({4: np.full((5, 2, 2), 0.995)}, errors, draws=2, seed=0)
    assert max(float(p.max()) for p in clipped[4]) <= 1.0


def _crop_paths(paths: Paths, roots: tuple[str, ...], study_id: int, series_id: int) -> list[Path]:
    """The crop sets with stage-1 error that exist for a series."""
    return [p for p in (paths.stage2_array(study_id, series_id, root) for root in roots) if p.exists()]


def _work_with_oof(prepared: Paths, tmp_path: Path) -> tuple[Paths, dict[int, np.ndarray]]:
    """A work folder whose stage-1 T2 OOF file predicts every T2 series' keypoints shifted by ``OFFSET``."""
    work = tmp_path / "work"
    shutil.copytree(prepared.work_dir, work, ignore=shutil.ignore_patterns("models", "oof"))
    paths = Paths(data_dir=prepared.data_dir, work_dir=work)
    series = load_table(paths, "series")
    truth = points_by_series(load_table(paths, "keypoints"))
    t2 = [s for s in series.loc[series["view"] == "t2", "series_id"] if s in truth]
    paths.oof_dir.mkdir(parents=True)
    predicted = torch.tensor(np.stack([truth[s] + OFFSET for s in t2]).reshape(len(t2), 10, 2))
    keypoint_frame(t2, predicted).assign(fold=0).to_csv(paths.oof_dir / "stage1_t2-f0-s42.csv", index=False)
    return paths, {s: truth[s] for s in t2}


def test_crop_sets_are_cut_around_the_oof_keypoints_once(prepared: Paths, tmp_path: Path, capsys) -> None:
    paths, truth = _work_with_oof(prepared, tmp_path)
    cfg = preset("sp1", "smoke")
    roots = stage1_error.make_error_crops(paths, cfg, draws=2)
    assert roots == ("stage2_error/0", "stage2_error/1") and "cutting 2 crop sets" in capsys.readouterr().out
    series = load_table(paths, "series").set_index("series_id")
    for series_id, points in truth.items():
        study_id = int(series.loc[series_id, "study_id"])
        saved = [np.load(p) for p in _crop_paths(paths, roots, study_id, series_id)]
        assert len(saved) == 2 and saved[0].shape == np.load(paths.stage2_array(study_id, series_id)).shape
        # Draw 0 is the crop the series' own out-of-fold prediction gives, the crop inference would cut.
        dicom = read_series(paths.series_dir("train", study_id, series_id))
        preprocess = stage1_error.preprocess_config(paths)
        expected = stage2_crops(
            dicom, points + OFFSET, "t2", preprocess, intensity_window(dicom.slices, preprocess.percentiles)
        )
        assert np.array_equal(saved[0], expected)
    assert stage1_error.make_error_crops(paths, cfg, draws=2) == roots
    assert "cutting" not in capsys.readouterr().out  # cached: nothing is cut again


def test_without_stage1_oof_training_keeps_the_ground_truth_crops(prepared: Paths, tmp_path: Path, capsys) -> None:
    paths = Paths(data_dir=prepared.data_dir, work_dir=tmp_path / "empty")
    assert stage1_error.make_error_crops(paths, preset("fo", "smoke"), draws=2) == ()
    assert "no stage-1 OOF predictions for t1" in capsys.readouterr().out


@pytest.mark.parametrize(("error_p", "same"), [(0.0, True), (1.0, False)])
def test_the_dataset_reads_crops_with_error_at_the_configured_rate(
    prepared: Paths, tmp_path: Path, error_p: float, same: bool
) -> None:
    paths, truth = _work_with_oof(prepared, tmp_path)
    roots = stage1_error.make_error_crops(paths, preset("sp1", "smoke"), draws=1)
    series = load_table(paths, "series")
    t2 = series[series["series_id"].isin(truth)]
    plain = CropDataset(t2, paths, 8, ("spinal_canal_stenosis",), train=True, flip=False)
    moved = CropDataset(
        t2, paths, 8, ("spinal_canal_stenosis",), train=True, flip=False, error_roots=roots, error_p=error_p
    )
    assert torch.equal(plain[0]["image"], moved[0]["image"]) == same


def test_training_reads_crops_with_error_when_configured_and_validation_never(prepared: Paths, tmp_path: Path) -> None:
    paths, _ = _work_with_oof(prepared, tmp_path)
    cfg = preset("sp1", "smoke", {"stage1_error_p": 1.0, "stage1_error_draws": 1})
    train_set, val_set = train.datasets(paths, cfg, train.training_samples(paths, cfg), fold=0)
    assert train_set.error_roots == ("stage2_error/0",) and train_set.error_p == 1.0
    assert val_set.error_roots == () and val_set.error_p == 0.0
    assert preset("sp1").stage1_error_p == 0.0  # off by default (README: what it measured)
