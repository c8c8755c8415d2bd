"""Points that the competition's coordinates miss, estimated from those they have.

``train_label_coordinates.csv`` misses a level here and there (as does the synthetic data): a T2 series with four of
its five canal points, a T1 series with one foramen of a level unmarked. Without an estimate such a series would
have no keypoints at all, and so no stage-2 crops: every label of its study for that view would go unused. So the
missing points are estimated, and the rows that hold them say so in their ``source`` (``ESTIMATED``):

- a foramen missing on one side of a level takes the other side's point (on their own sagittal slices the two
  foramina of a level lie at nearly the same place);
- a level missing altogether lies on the line through its neighbours: between two known levels in proportion,
  beyond the last known ones along the line of the nearest two.

A series with fewer than two known levels is not estimated. Estimated points cut stage-2 crops (a few pixels off, as
the localisers' own errors are); the localisers neither train nor are scored on a series that has one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ESTIMATED = " (estimated)"
"""Appended to the ``source`` of a keypoint row whose point was estimated."""


def fill_levels(points: np.ndarray) -> np.ndarray | None:
    """(n_levels, 2) points with NaN rows for the missing levels -> every level placed (module doc); None with fewer
    than two known levels."""
    known = np.flatnonzero(np.isfinite(points).all(axis=1))
    if len(known) < 2:
        return None
    filled = np.array(points, dtype=np.float64)
    for level in sorted(set(range(len(points))) - set(known.tolist())):
        below, above = known[known < level], known[known > level]
        if len(below) and len(above):
            a, b = below[-1], above[0]
        elif len(above):
            a, b = above[0], above[1]
        else:
            a, b = below[-2], below[-1]
        filled[level] = filled[a] + (level - a) / (b - a) * (filled[b] - filled[a])
    return filled


def fill_foramina(points: np.ndarray) -> np.ndarray | None:
    """(n_levels, 2 sides, 2) foraminal points with NaN where missing -> every one placed: a level's missing side
    from the other side, then the levels missing both from the other levels (``fill_levels``, side by side)."""
    filled = np.array(points, dtype=np.float64)
    present = np.isfinite(filled).all(axis=2)  # (levels, sides)
    for side, other in ((0, 1), (1, 0)):
        borrow = ~present[:, side] & present[:, other]
        filled[borrow, side] = filled[borrow, other]
    sides = [fill_levels(filled[:, side]) for side in (0, 1)]
    if sides[0] is None or sides[1] is None:
        return None
    return np.stack(sides, axis=1)


def estimated_series(keypoints: pd.DataFrame) -> set[int]:
    """The series of a keypoint table with at least one estimated point."""
    mask = keypoints["source"].astype(str).str.endswith(ESTIMATED)
    return {int(s) for s in keypoints.loc[mask, "series_id"].unique()}
