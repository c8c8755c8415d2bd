"""Axial T2 series: blocks of one orientation, and which slice images each disc level.

An "Axial T2" series is often several short stacks, each angled along one disc, or one long stack whose instance
numbers run either way, with gaps, and whose upper slabs may share one orientation a disc apart. It is read from its
headers into blocks (slices within ``ORIENTATION_TOLERANCE_DEG`` of one orientation, cut where the step between
neighbours exceeds ``GAP_FACTOR`` x the median step), each ordered top to bottom along its own normal, blocks ordered
by the height of their top slice; images that are not axial (a coronal localiser stored in the
series) are dropped with a message. Pixels are never needed for this.

Levels: each level's Sagittal T2 keypoint behind the disc (ground truth in training, predicted at inference),
placed on the middle slice of its sagittal series, is a point in patient coordinates (mm, LPS). Its signed distance
to every axial slice plane (each slice's own normal: blocks differ) gives, per series, the nearest slice; the level
is assigned to that slice when the distance is at most ``max_distance_mm`` (3 mm for training samples, 5 mm at
inference) and the point projected onto the slice falls inside its image. Neighbouring slices come from the same
block only (``stack_instances``): a neighbour in another block images another disc.

``level_table`` writes one row per axial slice (its block, the nearest level, the signed distance to that level's
point, whether it is that level's assigned slice); ``build_level_table`` does it for every study of a split and
reports what has no coverage: those rows keep the sagittal prediction. The training samples of the assigned slices
are ``axial_samples``'; their stacks and crops are cut by ``axial_crops``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils.core import paths as P
from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.constants import LEVEL_NAMES
from kaggle_utils.core.views import LEVEL_VIEW, PLACING_VIEW
from kaggle_utils.io.competition import drop_excluded, listed_series
from kaggle_utils.io.dicom import (
    Geometry,
    SeriesError,
    in_plane,
    order_slices,
    pixel_to_world,
    read_geometry,
    world_to_pixel,
)
from kaggle_utils.io.tables import SCHEMAS, series_points

ORIENTATION_TOLERANCE_DEG = 0.5
"""Slices whose normals and row directions agree within this angle share one orientation."""

GAP_FACTOR = 1.5
"""A step between neighbouring slices of one orientation larger than this x the median step starts a new block."""

LEVEL_COLUMNS = SCHEMAS["axial_levels"]
"""Columns of the per-slice level table (``tables/axial_levels.csv``)."""


# --- reading ------------------------------------------------------------------------------------------------
def slice_normals(orientations: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals ``row x col`` of each slice, signed so that axial ones point superior (+z)."""
    iop = np.asarray(orientations, dtype=np.float64).reshape(-1, 6)
    normals = np.cross(iop[:, :3], iop[:, 3:])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return normals * np.where(normals[:, 2:] < 0, -1.0, 1.0)


@dataclass
class AxialSeries:
    """One Axial T2 series: its axial slices ordered block by block, top to bottom inside each block."""

    series_id: int
    geometry: Geometry
    block: np.ndarray  # (N,) block id, 0 = the block whose top slice is highest
    index: np.ndarray  # (N,) position inside its block, 0 = top
    normals: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.normals = slice_normals(self.geometry.orientations)

    def __len__(self) -> int:
        return len(self.block)

    @property
    def instance_numbers(self) -> np.ndarray:
        return self.geometry.instance_numbers

    def signed_distances(self, point: np.ndarray) -> np.ndarray:
        """(N,) mm from each slice plane to a world point, positive above the slice."""
        return np.einsum("nk,nk->n", np.asarray(point, dtype=np.float64) - self.geometry.positions, self.normals)

    def pixel(self, k: int, point: np.ndarray) -> np.ndarray:
        """(2,) pixel x (column), y (row) of a world point projected onto slice k."""
        g = self.geometry
        return world_to_pixel(g.positions[k], g.orientations[k], g.pixel_spacing[k], point)

    def inside(self, k: int, xy: np.ndarray) -> bool:
        rows, cols = self.geometry.shapes[k]
        return bool(0 <= xy[0] < cols and 0 <= xy[1] < rows)


def orientation_groups(orientations: np.ndarray) -> np.ndarray:
    """(N,) group id of each slice: slices whose normals and row directions lie within ``ORIENTATION_TOLERANCE_DEG``
    of a group's first slice join it. (Rounding the cosines would split two equal orientations whose values
    straddle a rounding step, and the headers' float noise does that.)"""
    iop = np.asarray(orientations, dtype=np.float64).reshape(-1, 6)
    normals = slice_normals(iop)
    rows = iop[:, :3] / np.linalg.norm(iop[:, :3], axis=1, keepdims=True)
    cosine = np.cos(np.deg2rad(ORIENTATION_TOLERANCE_DEG))
    group, firsts = np.full(len(iop), -1), []
    for i in range(len(iop)):
        for g, first in enumerate(firsts):
            if normals[i] @ normals[first] >= cosine and rows[i] @ rows[first] >= cosine:
                group[i] = g
                break
        else:
            group[i], firsts = len(firsts), [*firsts, i]
    return group


def split_at_gaps(heights: np.ndarray) -> list[np.ndarray]:
    """Runs of indices into ``heights`` (ordered top to bottom) cut where the step down exceeds ``GAP_FACTOR`` x the
    median step: parallel slabs a disc apart in one orientation are separate blocks."""
    steps = -np.diff(np.asarray(heights, dtype=np.float64))
    if len(steps) < 2:
        return [np.arange(len(heights))]
    cuts = np.flatnonzero(steps > GAP_FACTOR * np.median(steps)) + 1
    return np.split(np.arange(len(heights)), cuts)


def split_blocks(series_id: int, geometry: Geometry) -> AxialSeries:
    """Blocks of one orientation (``orientation_groups``) and no gap (``split_at_gaps``), each ordered top to
    bottom, the blocks by the height of their top slice."""
    groups = orientation_groups(geometry.orientations)
    ordered = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        part = geometry.take(members)
        members = members[order_slices(part.positions, part.orientations[0], part.instance_numbers)]
        heights = geometry.positions[members] @ slice_normals(geometry.orientations[members[:1]])[0]
        ordered += [members[run] for run in split_at_gaps(heights)]
    ordered.sort(key=lambda members: -geometry.positions[members[0], 2])
    order = np.concatenate(ordered)
    block = np.concatenate([np.full(len(m), b) for b, m in enumerate(ordered)])
    index = np.concatenate([np.arange(len(m)) for m in ordered])
    return AxialSeries(series_id, geometry.take(order), block, index)


def read_axial_series(folder: Path, series_id: int) -> AxialSeries | None:
    """An axial series from its headers (``axial_from_geometry``)."""
    return axial_from_geometry(series_id, read_geometry(folder))


def axial_from_geometry(series_id: int, geometry: Geometry) -> AxialSeries | None:
    """The series' axial slices in blocks; each image of another plane (a localiser stored with the series) is
    left out and named in the geometry's ``dropped``; None when none is axial."""
    names = [f.name for f in geometry.files] or [f"instance {i}" for i in geometry.instance_numbers]
    axial, off = in_plane(geometry.orientations, names, "axial")
    if not axial.any():
        return None
    geometry = replace(geometry, dropped=geometry.dropped + tuple(off))
    return split_blocks(series_id, geometry.take(np.flatnonzero(axial)))


# --- level assignment ---------------------------------------------------------------------------------------
def middle_slice(geometry: Geometry) -> int:
    """Index (into ``geometry``) of the middle slice of a sagittal series ordered in space."""
    order = order_slices(geometry.positions, geometry.orientations[0], geometry.instance_numbers)
    return int(order[len(order) // 2])


def sagittal_level_points(keypoints: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(5, 3) world mm of each level's back-of-disc point, from a Sagittal T2 series' (5, 2, 2) relative
    keypoints (x by columns, y by rows of the image) placed on the series' middle slice: of a level's two points the
    one with the larger patient y (posterior, LPS), whichever way the image's rows run."""
    k = middle_slice(geometry)
    rows, cols = geometry.shapes[k]
    points = np.asarray(keypoints, dtype=np.float64)
    g, x, y = geometry, points[..., 0] * cols, points[..., 1] * rows
    world = pixel_to_world(g.positions[k], g.orientations[k], g.pixel_spacing[k], x, y)
    back = np.argmax(world[..., 1], axis=1)
    return world[np.arange(len(world)), back]


@dataclass(frozen=True)
class LevelMatch:
    """A level's nearest slice in one series, and whether it is assigned there."""

    level_index: int  # into LEVEL_NAMES
    series_id: int
    slice: int  # index into the series' ordered slices
    distance_mm: float  # signed: positive when the level's point is above the slice
    xy: tuple[float, float]  # the level's point projected onto the slice, pixels
    assigned: bool


def distance_matrix(points: np.ndarray, series: AxialSeries) -> np.ndarray:
    """(slices, levels) signed mm from each slice plane to each level's point."""
    return np.stack([series.signed_distances(p) for p in np.asarray(points, dtype=np.float64)], axis=1)


def match_levels(
    points: np.ndarray, series: AxialSeries, max_distance_mm: float, distances: np.ndarray | None = None
) -> list[LevelMatch]:
    """Each level's nearest slice in ``series``; assigned when within ``max_distance_mm`` and inside the image
    (``distances``: the ``distance_matrix``, when the caller has it)."""
    distances = distance_matrix(points, series) if distances is None else distances
    matches = []
    for level_index, point in enumerate(np.asarray(points, dtype=np.float64)):
        k = int(np.argmin(np.abs(distances[:, level_index])))
        xy = series.pixel(k, point)
        assigned = abs(distances[k, level_index]) <= max_distance_mm and series.inside(k, xy)
        matches.append(
            LevelMatch(
                level_index,
                series.series_id,
                k,
                float(distances[k, level_index]),
                (float(xy[0]), float(xy[1])),
                assigned,
            )
        )
    return matches


def level_table(study_id: int, points: np.ndarray, series: list[AxialSeries], max_distance_mm: float) -> pd.DataFrame:
    """One row per axial slice of a study: block, index, nearest level, signed distance to it, assigned or not, and
    that level's point projected onto the slice (pixels)."""
    frames = []
    for s in series:
        distances = distance_matrix(points, s)
        level_index = np.argmin(np.abs(distances), axis=1)
        assigned = np.zeros(len(s), dtype=bool)
        for match in match_levels(points, s, max_distance_mm, distances):
            if match.assigned:
                level_index[match.slice], assigned[match.slice] = match.level_index, True
        projected = np.array([s.pixel(k, points[lv]) for k, lv in enumerate(level_index)]).reshape(-1, 2)
        frames.append(
            pd.DataFrame(
                {
                    "study_id": study_id,
                    "series_id": s.series_id,
                    "instance_number": s.instance_numbers,
                    "block": s.block,
                    "index": s.index,
                    "level": np.asarray(LEVEL_NAMES)[level_index],
                    "distance_mm": np.round(distances[np.arange(len(s)), level_index], 3),
                    "assigned": assigned,
                    "point_x": np.round(projected[:, 0], 3),  # the level's point on the slice, pixels
                    "point_y": np.round(projected[:, 1], 3),
                    "rows": s.geometry.shapes[:, 0],
                    "columns": s.geometry.shapes[:, 1],
                    "row_mm": s.geometry.pixel_spacing[:, 0],
                    "column_mm": s.geometry.pixel_spacing[:, 1],
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(LEVEL_COLUMNS))


# --- every study of a split ---------------------------------------------------------------------------------
def axial_series_table(paths: P.Paths, split: str) -> pd.DataFrame:
    """``study_id, series_id`` of the split's Axial T2 series (training drops the known bad ids)."""
    table = listed_series(paths, split)
    table = table[table["view"] == LEVEL_VIEW]
    if split == "train":
        table = drop_excluded(table)
    return table[["study_id", "series_id"]].reset_index(drop=True)


def t2_series_with_points(sagittal: pd.DataFrame, keypoints: pd.DataFrame) -> dict[int, list[int]]:
    """Study id -> its Sagittal T2 series (of a series table) that have keypoints, in table order."""
    t2 = sagittal[(sagittal["view"] == PLACING_VIEW) & sagittal["series_id"].isin(keypoints["series_id"])]
    return {int(study): [int(s) for s in ids] for study, ids in t2.groupby("study_id", sort=False)["series_id"]}


@dataclass
class Coverage:
    """What the level table covers: studies, axial series read, (study, level) pairs with an assigned slice."""

    studies: int = 0
    without_axial: list[int] = field(default_factory=list)
    without_sagittal_t2: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "series id: why"
    levels_assigned: int = 0
    levels_total: int = 0

    def __str__(self) -> str:
        return (
            f"{self.studies} studies: {self.levels_assigned} of {self.levels_total} levels have an axial slice; "
            f"{len(self.without_axial)} studies without an axial series, {len(self.without_sagittal_t2)} without "
            f"Sagittal T2 keypoints, {len(self.unreadable)} axial series unreadable "
            f"(the sagittal prediction stands for those rows)"
        )


def study_axial_series(
    paths: P.Paths, split: str, study_id: int, series_ids: list[int], coverage: Coverage | None = None
) -> list[AxialSeries]:
    """A study's readable axial series; the files each leaves out are named in a warning, the series that cannot be
    read are counted in ``coverage``."""
    found = []
    for series_id in series_ids:
        try:
            series = read_axial_series(paths.series_dir(split, study_id, series_id), series_id)
        except SeriesError as err:
            if coverage is not None:
                coverage.unreadable.append(f"{series_id}: {err}")
            continue
        if series is None:
            if coverage is not None:
                coverage.unreadable.append(f"{series_id}: none of its images is axial")
            continue
        for line in series.geometry.dropped:
            warnings.warn(f"study {study_id} axial series {series_id}: slice left out: {line}", stacklevel=2)
        found.append(series)
    return found


def build_level_table(
    paths: P.Paths,
    split: str,
    sagittal: pd.DataFrame,
    keypoints: pd.DataFrame,
    max_distance_mm: float,
    progress: bool = True,
) -> tuple[pd.DataFrame, Coverage]:
    """The per-slice level table of every study of ``sagittal`` (a series table) and what it covers.

    ``keypoints`` is a keypoint table (ground truth or predicted); each study's first Sagittal T2 series with
    keypoints places its levels. A study without one, or without a readable axial series, adds no rows.
    """
    axial = axial_series_table(paths, split).groupby("study_id")["series_id"].apply(list).to_dict()
    t2_of = t2_series_with_points(sagittal, keypoints)
    coverage, frames = Coverage(), []
    for study_id in tqdm(sorted(sagittal["study_id"].unique()), desc="axial levels", disable=not progress):
        coverage.studies += 1
        candidates = t2_of.get(int(study_id), [])
        if not candidates:  # nothing to place the levels with: the axial headers are not read
            coverage.without_sagittal_t2.append(int(study_id))
            continue
        series = study_axial_series(paths, split, int(study_id), axial.get(study_id, []), coverage)
        if not series:
            coverage.without_axial.append(int(study_id))
            coverage.levels_total += len(LEVEL_NAMES)
            continue
        try:
            geometry = read_geometry(paths.series_dir(split, int(study_id), candidates[0]))
        except SeriesError as err:
            warnings.warn(f"study {study_id}: Sagittal T2 headers unreadable, no axial levels ({err})", stacklevel=2)
            coverage.without_sagittal_t2.append(int(study_id))
            continue
        points = sagittal_level_points(series_points(keypoints, candidates[0]), geometry)
        table = level_table(int(study_id), points, series, max_distance_mm)
        frames.append(table)
        coverage.levels_total += len(LEVEL_NAMES)
        coverage.levels_assigned += table.loc[table["assigned"], "level"].nunique()
    for problem in coverage.unreadable:
        warnings.warn(f"axial series {problem}", stacklevel=2)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(LEVEL_COLUMNS))
    return table, coverage


# --- a level's stack --------------------------------------------------------------------------------------
def stack_instances(levels: pd.DataFrame, series_id: int, instance: int, cfg: PreprocessConfig) -> list[int]:
    """Instance numbers of the ``cfg.axial_stack_slices`` slices around ``instance`` in its block, top to bottom, the
    block's end slices repeated past its ends (from a level table's block and index columns)."""
    table = levels[levels["series_id"] == series_id]
    centre = table[table["instance_number"] == instance].iloc[0]
    block = table[table["block"] == centre["block"]].sort_values("index")["instance_number"].to_numpy()
    n = cfg.axial_stack_slices
    offsets = np.arange(n) - n // 2
    return [int(block[i]) for i in np.clip(int(centre["index"]) + offsets, 0, len(block) - 1)]
