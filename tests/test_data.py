"""Frame selection, targets and pseudo targets of the datasets."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.constants import FORAMINAL_CONDITIONS, IGNORE_INDEX, LABEL_COLUMNS, LEVELS, SEVERITY_COLUMNS, row_id
from kaggle_utils.data import CropDataset, one_hot_targets, select_frames, soft_targets, take_frames
from kaggle_utils.paths import Paths


@pytest.mark.parametrize(
    ("n_total", "n_frames", "indices"),
    [(10, 4, [3, 4, 5, 6]), (11, 4, [3, 4, 5, 6]), (4, 4, [0, 1, 2, 3]), (3, 8, [-1, -1, 0, 1, 2, -1, -1, -1])],
)
def test_middle_frames_and_symmetric_padding(n_total, n_frames, indices):
    chosen, mask = select_frames(n_total, n_frames)
    assert chosen.tolist() == indices
    assert mask.tolist() == [i >= 0 for i in indices]


def test_take_frames_moves_the_slice_axis_first_and_zero_pads():
    array = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) + 1
    frames, mask = take_frames(array, 5)
    assert frames.shape == (5, 2, 2) and mask.tolist() == [False, True, True, True, False]
    assert (frames[1] == array[..., 0]).all() and not frames[0].any()


def test_one_hot_targets_mark_missing_rows():
    out = one_hot_targets(np.array([[0, 2], [IGNORE_INDEX, 1]]))
    assert out.shape == (2, 2, 3)
    assert out[0, 1].tolist() == [0, 0, 1] and (out[1, 0] == IGNORE_INDEX).all()


def _crop_dataset(tmp_path, pseudo_values: dict[str, list[float]] | None, train: bool = True) -> CropDataset:
    """One T1 study (foraminal rows: left Normal, right Severe) with a cached crop array of 3 distinct slices."""
    paths = Paths(tmp_path, tmp_path)
    array = np.zeros((8, 8, 5, 3), np.uint8)
    array[..., 0] = 10  # the patient's left slice
    paths.stage2_array(1, 2).parent.mkdir(parents=True)
    np.save(paths.stage2_array(1, 2), array)
    right = FORAMINAL_CONDITIONS[1]
    targets = pd.DataFrame({"study_id": [1], **{c: [2 if c.startswith(right) else 0] for c in LABEL_COLUMNS}})
    pseudo = None
    if pseudo_values is not None:
        pseudo = pd.DataFrame(
            [(1, row_id(1, f"{c}_{lv}"), *v) for c, v in pseudo_values.items() for lv in LEVELS[:4]],  # L5/S1 absent
            columns=["study_id", "row_id", *SEVERITY_COLUMNS],
        )
    series = pd.DataFrame({"study_id": [1], "series_id": [2]})
    return CropDataset(series, paths, 3, FORAMINAL_CONDITIONS, targets, train=train, pseudo=pseudo)


def test_pseudo_targets_follow_the_sequence_flip(tmp_path):
    left, right = FORAMINAL_CONDITIONS
    dataset = _crop_dataset(tmp_path, {left: [0.7, 0.2, 0.1], right: [0.1, 0.2, 0.7]})
    random.seed(0)
    flipped = set()
    for _ in range(20):
        sample = dataset[0]
        target, pseudo = sample["target"].numpy(), sample["pseudo"].numpy()
        assert pseudo.shape == target.shape == (5, 2, 3)
        is_flipped = bool(sample["image"][0, -1].max() == 10)  # the left slice went last
        flipped.add(is_flipped)
        sides = [1, 0] if is_flipped else [0, 1]
        np.testing.assert_array_equal(target[:, sides[0]], np.tile([1, 0, 0], (5, 1)))  # left Normal, wherever it is
        np.testing.assert_allclose(pseudo[:4, sides[0]], np.tile([0.7, 0.2, 0.1], (4, 1)))
        np.testing.assert_allclose(pseudo[:4, sides[1]], np.tile([0.1, 0.2, 0.7], (4, 1)))
        assert (pseudo[4] == IGNORE_INDEX).all()  # no pseudo label for L5/S1
    assert flipped == {True, False}


def test_without_a_pseudo_table_there_is_no_pseudo_key(tmp_path):
    assert "pseudo" not in _crop_dataset(tmp_path, None)[0]
    assert set(soft_targets(pd.DataFrame(columns=["study_id", "row_id", *SEVERITY_COLUMNS]), ("x",))) == set()
