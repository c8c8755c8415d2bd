"""The label vocabulary: the condition rows a stage-2 model predicts per level and their left/right pairs, the
per-level probabilities as submission-style rows, the order of a level's two keypoints, and a level's name in file
names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils.core.constants import (
    CONDITIONS,
    FORAMINAL_CONDITIONS,
    LEVEL_NAMES,
    LEVEL_SLUGS,
    SUBARTICULAR_CONDITIONS,
    condition_family,
    row_id,
)

CONDITION_ROWS: dict[str, tuple[str, ...]] = {
    "all": CONDITIONS,
    "foraminal": FORAMINAL_CONDITIONS,
    # an axial level's three crops in order: the canal (spinal), the left and the (mirrored) right recess
    "axial": (CONDITIONS[0], *SUBARTICULAR_CONDITIONS),
}


def condition_rows(condition: str) -> tuple[str, ...]:
    """Condition names of the rows a stage-2 model predicts per level, in output order."""
    if condition not in CONDITION_ROWS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITION_ROWS)}")
    return CONDITION_ROWS[condition]


def left_right_pairs(condition: str) -> tuple[tuple[int, int], ...]:
    """Row indices (left, right) of each sided condition: the rows a sequence flip swaps."""
    return left_right_pairs_of(condition_rows(condition))


def left_right_pairs_of(rows: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Row indices (left, right) of each sided condition among ``rows``."""
    rows = tuple(rows)
    return tuple(
        (i, rows.index(name.replace("left_", "right_", 1))) for i, name in enumerate(rows) if name.startswith("left_")
    )


def is_sided(condition: str) -> bool:
    """Whether a condition has a side (left/right) rather than being central (spinal canal)."""
    return condition.startswith(("left_", "right_"))


def head_groups(condition: str) -> tuple[tuple[str, ...], ...]:
    """Rows grouped by condition family, one group per head; groups are contiguous in row order."""
    groups: dict[str, list[str]] = {}
    for name in condition_rows(condition):
        groups.setdefault(condition_family(name), []).append(name)
    return tuple(tuple(rows) for rows in groups.values())


def level_frame(
    study_ids: Any, series_ids: Any, probs: np.ndarray, rows: tuple[str, ...], levels: Any = None
) -> pd.DataFrame:
    """Per-series probabilities (B, 5, R, 3) as rows ``study_id, series_id, row_id, normal_mild, moderate, severe``;
    with ``levels`` (one ``LEVEL_SLUGS`` index per sample: a view classified per level), probabilities (B, 1, R, 3)."""
    records = []
    for i, (study, series, per_level) in enumerate(zip(study_ids, series_ids, probs, strict=True)):
        names = LEVEL_SLUGS if levels is None else (LEVEL_SLUGS[int(levels[i])],)
        for level, per_row in zip(names, per_level, strict=True):
            for condition, p in zip(rows, per_row, strict=True):
                records.append((int(study), int(series), row_id(int(study), f"{condition}_{level}"), *p.tolist()))
    return pd.DataFrame(records, columns=["study_id", "series_id", "row_id", "normal_mild", "moderate", "severe"])


def sort_level_points(points: np.ndarray) -> np.ndarray:
    """(5, 2, 2) relative (x, y): the two points of each level ordered by x (front of the disc first on T2)."""
    points = np.asarray(points, np.float64)
    order = np.argsort(points[:, :, 0], axis=1, kind="stable")
    return np.take_along_axis(points, order[:, :, None], axis=1)


def level_slug(level: str) -> str:
    """``L1/L2`` -> ``l1_l2`` (file names)."""
    return LEVEL_SLUGS[LEVEL_NAMES.index(level)]
