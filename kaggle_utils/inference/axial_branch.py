"""The axial branch's tables: a split's Axial T2 series per study, the axial presets' rows apart from the sagittal
ones, one axial prediction per row id (several series or blocks imaging a level weighted by their distance to it),
the levels it placed and the line that counts them. The branch's steps themselves are ``run.Inference``'s methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kaggle_utils.core.constants import LEVEL_NAMES, SEVERITY_COLUMNS
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.views import LEVEL_VIEW
from kaggle_utils.inference.ensemble import ModelSet, model_sets
from kaggle_utils.inference.submission import route
from kaggle_utils.preprocessing.axial_levels import axial_series_table

AXIAL_POINT_COLUMNS = ("left_x", "left_y", "right_x", "right_y")
"""An axial level's two predicted points as inference's tables hold them, relative to its assigned slice (x by
columns, y by rows)."""

AXIAL_DISTANCE_SCALE_MM = 2.0
"""Several series (or blocks) imaging one level: their predictions are averaged with weights exp(-|d| / this), d the
distance from the level's point to the assigned slice's plane."""


def axial_series_ids(paths: Paths, split: str) -> dict[int, list[int]]:
    """Study id -> its Axial T2 series ids (a study without has no entry)."""
    table = axial_series_table(paths, split)
    return {int(study): [int(s) for s in ids] for study, ids in table.groupby("study_id")["series_id"]}


def merge_axial(levels: pd.DataFrame, routes: dict[str, dict[str, int]]) -> pd.DataFrame:
    """One axial prediction per row id: each preset's mean over the series (and blocks) imaging the row's level,
    weighted by distance (``AXIAL_DISTANCE_SCALE_MM``), then the presets routed as ``route`` does; ``distance_mm``
    is the nearest of those slices' distances to the level's point (the blend shrinks the axial weight with it)."""
    if levels.empty:
        return pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS, "distance_mm"])
    weight = np.exp(-levels["distance_mm"].abs().to_numpy(float) / AXIAL_DISTANCE_SCALE_MM)
    weighted = levels[list(SEVERITY_COLUMNS)].mul(weight, axis=0).assign(weight=weight)
    sums = weighted.groupby([levels["row_id"], levels["preset"]]).sum()
    per_preset = sums[list(SEVERITY_COLUMNS)].div(sums["weight"], axis=0).reset_index()
    nearest = levels["distance_mm"].abs().groupby(levels["row_id"]).min()
    routed = route(per_preset, routes)
    return routed.assign(distance_mm=routed["row_id"].map(nearest).to_numpy(float))


def axial_coverage(placed: pd.DataFrame, study_ids: list[int], axial_series: Mapping[int, list[int]]) -> str:
    """One line: how many of the studies' levels the axial branch predicted, and how many studies have no Axial T2
    series (their rows, and those of the levels no slice reached, are the sagittal prediction)."""
    levels = placed[placed["study_id"].isin(study_ids)].drop_duplicates(["study_id", "level"])
    without = sum(1 for s in study_ids if not axial_series.get(s))
    return (
        f"axial branch: {len(levels)} of {len(LEVEL_NAMES) * len(study_ids)} levels of {len(study_ids)} studies on an "
        f"axial slice, {without} of the studies without an Axial T2 series (the sagittal prediction stands elsewhere); "
        f"{levels_recentred(placed)} assigned slices' localiser points recentred on the sagittal canal point"
    )


def levels_recentred(placed: pd.DataFrame) -> int:
    """How many of the placed levels (``axial_points``) had their localiser points recentred (``axial_check``)."""
    return int(placed["recentred"].astype(bool).sum()) if "recentred" in placed else 0


def axial_points(axial_levels: pd.DataFrame) -> pd.DataFrame:
    """One row per axial level a series imaged: ``study_id, series_id, level, instance_number, distance_mm``, the
    localisers' points (``AXIAL_POINT_COLUMNS``) and whether they were ``recentred``."""
    columns = ["study_id", "series_id", "level", "instance_number", "distance_mm", *AXIAL_POINT_COLUMNS, "recentred"]
    if axial_levels.empty:
        return pd.DataFrame(columns=columns)
    return axial_levels[columns].drop_duplicates(["series_id", "level", "instance_number"]).reset_index(drop=True)


def split_axial(levels: pd.DataFrame, models: ModelSet | Sequence[ModelSet]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``Inference.predict_table``'s rows of the sagittal presets, and those of the axial presets."""
    if levels.empty:
        return levels, levels
    on_axial = levels["preset"].isin(model_sets(models)[0].presets_for(LEVEL_VIEW))
    return levels[~on_axial], levels[on_axial]
