"""Training tables: keypoints from the competition coordinates when no corrected file is given."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils import tables
from kaggle_utils.constants import CONDITION_TITLES, CONDITIONS, LEVEL_NAMES
from kaggle_utils.paths import COORDS_PRETRAIN_CSV, Paths


def _canal_rows(points: np.ndarray) -> pd.DataFrame:
    """Spinal canal coordinates (pixels) of one T2 series, one row per level."""
    title = CONDITION_TITLES[CONDITIONS[0]]
    return pd.DataFrame({"condition": title, "level": LEVEL_NAMES[: len(points)], "x": points[:, 0], "y": points[:, 1]})


def _fronts_and_backs(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = tables._series_points(_canal_rows(points), "t2", 100, 100, study_id=1, series_id=2)
    xy = np.array([(r[5], r[6]) for r in rows]) * 100
    return xy[0::2], xy[1::2]  # "L" (front) and "R" (canal) rows alternate


def test_an_upright_spine_gets_its_front_points_straight_ahead() -> None:
    canal = np.c_[np.full(5, 60.0), np.arange(5) * 10.0 + 20]
    front, back = _fronts_and_backs(canal)
    assert np.allclose(back, canal)
    assert np.allclose(front, canal - [9.0, 0.0])  # 0.9 level spacings to the front (smaller x)


def test_a_tilted_spine_gets_disc_lines_square_to_it() -> None:
    angle = np.radians(30)
    along = np.array([np.sin(angle), np.cos(angle)])  # down the image, leaning to the back
    canal = 50 + np.arange(5)[:, None] * 10.0 * along
    front, back = _fronts_and_backs(canal)
    disc = front - back
    assert np.allclose(np.linalg.norm(disc, axis=1), 9.0)
    assert np.allclose(disc @ along, 0.0, atol=1e-9) and (disc[:, 0] < 0).all()


def test_without_the_corrected_coordinates_the_keypoints_come_with_a_warning(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / COORDS_PRETRAIN_CSV).unlink()
    paths = Paths(data_dir=data, work_dir=tmp_path / "work")
    series = tables.series_table(paths, "train")
    # the synthetic labels, like the real ones, miss a level here and there: those series are left out
    with (
        pytest.warns(UserWarning, match="without 10 keypoints are left out"),
        pytest.warns(UserWarning, match=COORDS_PRETRAIN_CSV),
    ):
        keypoints = tables.keypoints_table(paths, series)
    assert set(keypoints["series_id"]) < set(series["series_id"]) and keypoints["series_id"].nunique() >= 12
    assert (keypoints.groupby("series_id").size() == 2 * len(LEVEL_NAMES)).all()
    t2 = keypoints[keypoints["plane"] == "t2"].pivot_table("relative_x", ["series_id", "level"], "side")
    assert (t2["L"] < t2["R"]).all()  # the derived front-of-disc point lies in front of the canal
