"""Estimating the points the competition's coordinates miss: a foramen from the other side, a level from its
neighbours, never from fewer than two levels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kaggle_utils.io.point_gaps import ESTIMATED, estimated_series, fill_foramina, fill_levels

NAN = np.nan


def test_a_missing_level_lies_on_the_line_through_its_neighbours() -> None:
    line = np.array([[10.0, 20.0], [12.0, 30.0], [14.0, 40.0], [16.0, 50.0], [18.0, 60.0]])
    for missing in ([0], [2], [4], [0, 1], [1, 3], [3, 4], [0, 2, 4]):
        gappy = line.copy()
        gappy[missing] = NAN
        np.testing.assert_allclose(fill_levels(gappy), line)
    bent = line.copy()
    bent[2] = NAN
    bent[3] = [20.0, 50.0]
    np.testing.assert_allclose(fill_levels(bent)[2], [16.0, 40.0])  # half way between its neighbours


def test_fewer_than_two_levels_place_nothing() -> None:
    one = np.full((5, 2), NAN)
    one[1] = [3.0, 4.0]
    assert fill_levels(one) is None
    assert fill_levels(np.full((5, 2), NAN)) is None


def test_a_missing_foramen_takes_the_other_sides_point_before_the_neighbours() -> None:
    left = np.array([[10.0, 20.0], [12.0, 30.0], [14.0, 40.0], [16.0, 50.0], [18.0, 60.0]])
    points = np.stack([left, left + [1.0, 0.0]], axis=1)  # the right foramina 1 px further back
    gappy = points.copy()
    gappy[2, 1] = NAN  # the right one of the middle level
    gappy[4] = NAN  # both of the last level
    filled = fill_foramina(gappy)
    np.testing.assert_allclose(filled[2, 1], points[2, 0])  # the left one's place, not the line's
    np.testing.assert_allclose(filled[4, 0], points[4, 0])  # each side along its own line (the right one's
    np.testing.assert_allclose(filled[4, 1], points[4, 1], atol=1.0)  # through the middle level's borrowed point)
    only_left = np.stack([left, np.full((5, 2), NAN)], axis=1)
    np.testing.assert_allclose(fill_foramina(only_left)[:, 1], left)
    lone = np.full((5, 2, 2), NAN)
    lone[0, 0] = [1.0, 2.0]
    assert fill_foramina(lone) is None


def test_series_with_an_estimated_point_are_found_by_its_source() -> None:
    table = pd.DataFrame({"series_id": [1, 1, 2], "source": ["a.csv", "a.csv" + ESTIMATED, "a.csv"]})
    assert estimated_series(table) == {1}
