"""Frame selection and targets of the datasets."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_utils.constants import IGNORE_INDEX
from kaggle_utils.data import one_hot_targets, select_frames, take_frames


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
