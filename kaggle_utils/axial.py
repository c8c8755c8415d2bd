"""Axial T2 series: blocks of one orientation, and which slice images each disc level.

An "Axial T2" series is often several short stacks, each angled along one disc, or one long stack whose instance
numbers run either way, with gaps. It is read from its headers into blocks (slices sharing one
ImageOrientationPatient, rounded to ``ORIENTATION_DECIMALS``), each ordered top to bottom along its own normal,
blocks ordered by the height of their top slice; images that are not axial (a coronal localiser stored in the
series) are dropped with a message. Pixels are never needed for this.

Levels: each level's Sagittal T2 keypoint behind the disc (ground truth in training, predicted at inference),
placed on the middle slice of its sagittal series, is a point in patient coordinates (mm, LPS). Its signed distance
to every axial slice plane (each slice's own normal: blocks differ) gives, per series, the nearest slice; the level
is assigned to that slice when the distance is at most ``max_distance_mm`` (3 mm for training samples, 5 mm at
inference) and the point projected onto the slice falls inside its image. Neighbouring slices come from the same
block only (``stack_instances``): a neighbour in another block images another disc.

``level_table`` writes one row per axial slice (its block, the nearest level, the signed distance to that level's
point, whether it is that level's assigned slice); ``build_level_table`` does it for every study of a split and
reports what has no coverage: those rows keep the sagittal prediction.

The axial localiser's samples are the assigned slices: ``keypoints_table`` pairs each with the left and right
subarticular points clicked on its series (``train_label_coordinates.csv``), and ``cache_stacks`` writes each
sample's ``STACK_SLICES`` slices (the assigned one in the middle, neighbours from its block) as a uint8 array and,
where the points are known, its crops: the canal between the two points and each lateral recess, sized in mm,
the right one mirrored (``level_crops``).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils import paths as P
from kaggle_utils.cache import cache_is_current, remove_partial_files, save_atomic
from kaggle_utils.config import PreprocessConfig
from kaggle_utils.constants import CONDITION_TITLES, LEVEL_NAMES, LEVELS, SUBARTICULAR_CONDITIONS
from kaggle_utils.dicom import (
    Geometry,
    SeriesError,
    order_slices,
    pixel_to_world,
    read_geometry,
    read_slice,
    world_to_pixel,
)
from kaggle_utils.preprocess import intensity_window, resize_slice, to_uint8
from kaggle_utils.tables import SCHEMAS, drop_excluded, listed_series, read_csv, save_table, series_points

ORIENTATION_DECIMALS = 3
"""Slices whose ImageOrientationPatient agree to this many decimals form one block."""

STACK_SLICES = 5
"""Slices cached per axial level: the assigned slice and two neighbours above and below, from its block."""

SIDES = dict(zip(("L", "R"), (CONDITION_TITLES[c] for c in SUBARTICULAR_CONDITIONS), strict=True))
"""The axial localiser's two points in output order, each with the condition naming it in the coordinates file."""

BACK_OF_DISC = 1
"""Index of the point behind the disc among a Sagittal T2 level's two keypoints (front first: see labels)."""

LEVEL_COLUMNS = SCHEMAS["axial_levels"]
"""Columns of the per-slice level table (``tables/axial_levels.csv``)."""


# --- reading ------------------------------------------------------------------------------------------------
def slice_normals(orientations: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals ``row x col`` of each slice, signed so that axial ones point superior (+z)."""
    iop = np.asarray(orientations, dtype=np.float64).reshape(-1, 6)
    normals = np.cross(iop[:, :3], iop[:, 3:])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return normals * np.where(normals[:, 2:] < 0, -1.0, 1.0)


def is_axial(orientations: np.ndarray) -> np.ndarray:
    """(N,) bool: the slice's normal is mostly superior-inferior (its largest component is z)."""
    return np.argmax(np.abs(slice_normals(orientations)), axis=1) == 2


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


def split_blocks(series_id: int, geometry: Geometry) -> AxialSeries:
    """Blocks of one orientation, each ordered top to bottom, the blocks by the height of their top slice."""
    keys = [tuple(row) for row in np.round(geometry.orientations, ORIENTATION_DECIMALS)]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    ordered = []
    for members in groups.values():
        members = np.asarray(members)
        part = geometry.take(members)
        ordered.append(members[order_slices(part.positions, part.orientations[0], part.instance_numbers)])
    ordered.sort(key=lambda members: -geometry.positions[members[0], 2])
    order = np.concatenate(ordered)
    block = np.concatenate([np.full(len(m), b) for b, m in enumerate(ordered)])
    index = np.concatenate([np.arange(len(m)) for m in ordered])
    return AxialSeries(series_id, geometry.take(order), block, index)


def read_axial_series(folder: Path, series_id: int) -> AxialSeries | None:
    """An axial series from its headers (``axial_from_geometry``)."""
    return axial_from_geometry(series_id, read_geometry(folder))


def axial_from_geometry(series_id: int, geometry: Geometry) -> AxialSeries | None:
    """The series' axial slices in blocks; non-axial images are dropped with a message; None when none is axial."""
    axial = is_axial(geometry.orientations)
    if not axial.all():
        dropped = geometry.instance_numbers[~axial].tolist()
        print(f"series {series_id}: {len(dropped)} non-axial images dropped (instances {dropped[:5]})")
    if not axial.any():
        return None
    return split_blocks(series_id, geometry.take(np.flatnonzero(axial)))


# --- level assignment ---------------------------------------------------------------------------------------
def middle_slice(geometry: Geometry) -> int:
    """Index (into ``geometry``) of the middle slice of a sagittal series ordered in space."""
    order = order_slices(geometry.positions, geometry.orientations[0], geometry.instance_numbers)
    return int(order[len(order) // 2])


def sagittal_level_points(keypoints: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(5, 3) world mm of each level's back-of-disc point, from a Sagittal T2 series' (5, 2, 2) relative
    keypoints (x by columns, y by rows of the image) placed on the series' middle slice."""
    k = middle_slice(geometry)
    rows, cols = geometry.shapes[k]
    back = np.asarray(keypoints, dtype=np.float64)[:, BACK_OF_DISC]
    g = geometry
    return pixel_to_world(g.positions[k], g.orientations[k], g.pixel_spacing[k], back[:, 0] * cols, back[:, 1] * rows)


@dataclass(frozen=True)
class LevelMatch:
    """A level's nearest slice in one series, and whether it is assigned there."""

    level: int
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
    for level, point in enumerate(np.asarray(points, dtype=np.float64)):
        k = int(np.argmin(np.abs(distances[:, level])))
        xy = series.pixel(k, point)
        assigned = abs(distances[k, level]) <= max_distance_mm and series.inside(k, xy)
        matches.append(
            LevelMatch(level, series.series_id, k, float(distances[k, level]), (float(xy[0]), float(xy[1])), assigned)
        )
    return matches


def level_table(study_id: int, points: np.ndarray, series: list[AxialSeries], max_distance_mm: float) -> pd.DataFrame:
    """One row per axial slice of a study: block, index, nearest level, signed distance to it, assigned or not."""
    frames = []
    for s in series:
        distances = distance_matrix(points, s)
        level = np.argmin(np.abs(distances), axis=1)
        assigned = np.zeros(len(s), dtype=bool)
        for match in match_levels(points, s, max_distance_mm, distances):
            if match.assigned:
                level[match.slice], assigned[match.slice] = match.level, True
        frames.append(
            pd.DataFrame(
                {
                    "study_id": study_id,
                    "series_id": s.series_id,
                    "instance_number": s.instance_numbers,
                    "block": s.block,
                    "index": s.index,
                    "level": np.asarray(LEVEL_NAMES)[level],
                    "distance_mm": np.round(distances[np.arange(len(s)), level], 3),
                    "assigned": assigned,
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
    table = table[table["plane"] == "axial"]
    if split == "train":
        table = drop_excluded(table)
    return table[["study_id", "series_id"]].reset_index(drop=True)


def t2_series_with_points(sagittal: pd.DataFrame, keypoints: pd.DataFrame) -> dict[int, list[int]]:
    """Study id -> its Sagittal T2 series (of a series table) that have keypoints, in table order."""
    t2 = sagittal[(sagittal["plane"] == "t2") & sagittal["series_id"].isin(keypoints["series_id"])]
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


def _study_series(paths: P.Paths, split: str, study_id: int, series_ids: list[int], coverage: Coverage) -> list:
    """A study's readable axial series; the files each leaves out are named in a warning."""
    found = []
    for series_id in series_ids:
        try:
            series = read_axial_series(paths.series_dir(split, study_id, series_id), series_id)
        except SeriesError as err:
            coverage.unreadable.append(f"{series_id}: {err}")
            continue
        for line in [] if series is None else series.geometry.dropped:
            warnings.warn(f"study {study_id} axial series {series_id}: slice left out: {line}", stacklevel=2)
        if series is not None:
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
        series = _study_series(paths, split, int(study_id), axial.get(study_id, []), coverage)
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


# --- the localiser's samples ----------------------------------------------------------------------------------
def keypoints_table(paths: P.Paths, levels: pd.DataFrame) -> pd.DataFrame:
    """The axial localiser's training samples: each assigned (series, level) slice of ``levels`` whose series carries
    both subarticular points of that level, the points relative to the image they were clicked on.

    A level whose two points sit on different series (two series, one side labelled on each) has no sample.
    """
    coords = read_csv(paths, P.TRAIN_COORDINATES_CSV)
    side_of = {condition: side for side, condition in SIDES.items()}
    coords = coords[coords["condition"].isin(side_of)].assign(side=lambda t: t["condition"].map(side_of))
    sizes = levels.set_index(["series_id", "instance_number"])[["rows", "columns"]]
    coords = coords.join(sizes, on=["series_id", "instance_number"], how="inner")
    coords["relative_x"], coords["relative_y"] = coords["x"] / coords["columns"], coords["y"] / coords["rows"]
    complete = coords.groupby(["series_id", "level"])["side"].transform("nunique") == len(SIDES)
    assigned = levels.loc[levels["assigned"], ["series_id", "level", "instance_number"]]
    table = coords[complete].drop(columns="instance_number").merge(assigned, on=["series_id", "level"])
    columns = list(SCHEMAS["axial_keypoints"])
    return table[columns].sort_values(["study_id", "series_id", "level", "side"]).reset_index(drop=True)


def points_by_level(keypoints: pd.DataFrame) -> dict[tuple[int, str], np.ndarray]:
    """(series id, level) -> (2, 2) relative (x, y) of the sample's left and right points, for a whole table."""
    out = {}
    for (series_id, level), rows in keypoints.groupby(["series_id", "level"]):
        by_side = rows.set_index("side")
        out[int(series_id), str(level)] = by_side.loc[list(SIDES), ["relative_x", "relative_y"]].to_numpy(np.float64)
    return out


def level_slug(level: str) -> str:
    """``L1/L2`` -> ``l1_l2`` (file names)."""
    return LEVELS[LEVEL_NAMES.index(level)]


def stack_instances(levels: pd.DataFrame, series_id: int, instance: int) -> list[int]:
    """Instance numbers of the ``STACK_SLICES`` slices around ``instance`` in its block, top to bottom, the
    block's end slices repeated past its ends (from a level table's block and index columns)."""
    table = levels[levels["series_id"] == series_id]
    centre = table[table["instance_number"] == instance].iloc[0]
    block = table[table["block"] == centre["block"]].sort_values("index")["instance_number"].to_numpy()
    offsets = np.arange(STACK_SLICES) - STACK_SLICES // 2
    return [int(block[i]) for i in np.clip(int(centre["index"]) + offsets, 0, len(block) - 1)]


AXIAL_POINT_COLUMNS = ("left_x", "left_y", "right_x", "right_y")
"""An axial level's two predicted points as inference's tables hold them, relative to its assigned slice (x by
columns, y by rows)."""

CENTRE_CROP_MM = 60.0
"""Side of the square crop around the midpoint of a level's two subarticular points: the canal (spinal stenosis)."""

SIDE_CROP_MM = 40.0
"""Side of the square crop around each subarticular point: that side's lateral recess."""

CROPS = ("centre", "left", "right")
"""The crops of an axial level, in the order they are cached; the right one is mirrored, so that one model reads
both sides with the recess on the same side of the image."""


def square_crop(image: np.ndarray, centre: np.ndarray, side_mm: float, spacing: np.ndarray, size: int) -> np.ndarray:
    """A ``side_mm`` square around ``centre`` (pixel x, y) of a slice with PixelSpacing ``spacing`` (row, column mm),
    resampled to ``size`` x ``size`` float32; beyond the image the border pixels are repeated."""
    width, height = (max(2, round(side_mm / float(s))) for s in (spacing[1], spacing[0]))
    patch = cv2.getRectSubPix(np.asarray(image, np.float32), (width, height), (float(centre[0]), float(centre[1])))
    interpolation = cv2.INTER_AREA if min(width, height) >= size else cv2.INTER_LANCZOS4
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def level_crops(
    slices: list[np.ndarray], points: np.ndarray, spacing: np.ndarray, size: int, window: tuple[float, float]
) -> np.ndarray:
    """(3, n, size, size) uint8: the centre, left and (mirrored) right crops of every slice of a level's stack, from
    its left and right points (2, 2), relative to the assigned slice's image."""
    rows, cols = slices[len(slices) // 2].shape
    left, right = np.asarray(points, np.float64) * (cols, rows)
    boxes = ((left + right) / 2, CENTRE_CROP_MM), (left, SIDE_CROP_MM), (right, SIDE_CROP_MM)
    crops = np.stack(
        [np.stack([square_crop(image, centre, mm, spacing, size) for image in slices]) for centre, mm in boxes]
    )
    crops[2] = crops[2][..., ::-1].copy()  # the right recess mirrored onto the left one's side
    return to_uint8(crops, window)


def level_stack(slices: list[np.ndarray], size: int, window: tuple[float, float]) -> np.ndarray:
    """(n, size, size) uint8: a level's native slices as the axial localiser sees them."""
    return np.stack([to_uint8(resize_slice(image, size), window) for image in slices])


@dataclass(frozen=True)
class LevelJob:
    """One assigned level of an axial series: its slices (instances, top to bottom), where its stack goes, and, with
    its two points (relative, left then right), where its crops go and the slices' PixelSpacing (row, column)."""

    instances: tuple[int, ...]
    stack_out: Path | None
    crops_out: Path | None = None
    points: np.ndarray | None = None
    spacing: np.ndarray | None = None


@dataclass(frozen=True)
class StackJob:
    """The levels to cut from one axial series."""

    folder: Path
    levels: tuple[LevelJob, ...]


def cut_stacks(job: StackJob, size: int, percentiles: tuple[float, float]) -> list[str]:
    """Read each instance once and write every level's stack and crops, each level windowed over its own slices (a
    sample's intensities then do not depend on which other levels of the series are assigned). Returns a line per
    file that could not be read and per level left uncut, instead of raising: a bad file costs the levels whose
    stack needs it, not the series or the run."""
    slices, problems = {}, []
    for instance in sorted({i for level in job.levels for i in level.instances}):
        try:
            slices[instance] = read_slice(job.folder / f"{instance}.dcm")
        except SeriesError as error:
            problems.append(f"axial series {job.folder}: {error}")
    for level in job.levels:
        name = (level.stack_out or level.crops_out).stem
        stack = [slices[i] for i in level.instances if i in slices]
        if len(stack) < len(level.instances):
            problems.append(
                f"axial series {job.folder}: level sample {name} not cached: a slice of its stack is unread"
            )
            continue
        try:
            window = intensity_window(stack, percentiles)
            if level.stack_out is not None:
                save_atomic(level.stack_out, level_stack(stack, size, window))
            if level.crops_out is not None:
                save_atomic(level.crops_out, level_crops(stack, level.points, level.spacing, size, window))
        except (ValueError, cv2.error) as error:
            problems.append(f"axial series {job.folder}: level sample {name} not cached: {error}")
    return problems


def plan_stacks(
    paths: P.Paths,
    split: str,
    levels: pd.DataFrame,
    cfg: PreprocessConfig,
    points: dict[tuple[int, str], np.ndarray] | None = None,
) -> list[StackJob]:
    """The stacks of every assigned level of ``levels``, and the crops of those with ``points`` ((series id, level)
    -> (2, 2) relative), that are missing or were made with other parameters."""
    current = {root: cache_is_current(paths.work_dir / root, cfg) for root in ("axial1", "axial2")}
    for root in current:
        remove_partial_files(paths.work_dir / root)
    points = points or {}
    jobs = []
    for (study_id, series_id), series_levels in levels.groupby(["study_id", "series_id"]):
        todo = []
        for row in series_levels[series_levels["assigned"]].itertuples():
            key = (int(study_id), int(series_id), level_slug(row.level), int(row.instance_number))
            stack, crops = paths.axial_stack(*key), paths.axial_crops(*key)
            level_points = points.get((int(series_id), row.level))
            need_stack = not (current["axial1"] and stack.exists())
            need_crops = level_points is not None and not (current["axial2"] and crops.exists())
            if need_stack or need_crops:
                todo.append(
                    LevelJob(
                        instances=tuple(stack_instances(series_levels, int(series_id), int(row.instance_number))),
                        stack_out=stack if need_stack else None,
                        crops_out=crops if need_crops else None,
                        points=level_points,
                        spacing=np.array([row.row_mm, row.column_mm]),
                    )
                )
        if todo:
            jobs.append(StackJob(paths.series_dir(split, int(study_id), int(series_id)), tuple(todo)))
    return jobs


def cache_stacks(
    paths: P.Paths,
    split: str,
    levels: pd.DataFrame,
    cfg: PreprocessConfig,
    points: dict[tuple[int, str], np.ndarray] | None = None,
    progress: bool = True,
) -> list[str]:
    """Write the missing stacks (and crops, see ``plan_stacks``) of ``levels`` over ``cfg.num_workers`` processes;
    returns the failures' warnings."""
    jobs = plan_stacks(paths, split, levels, cfg, points)
    args = (jobs, [cfg.img_size] * len(jobs), [cfg.percentiles] * len(jobs))
    bar = {"total": len(jobs), "desc": "axial stacks", "disable": not progress}
    if cfg.num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.num_workers) as pool:
            results = list(tqdm(pool.map(cut_stacks, *args), **bar))
    else:
        results = [cut_stacks(*a) for a in tqdm(zip(*args, strict=True), **bar)]
    problems = [line for lines in results for line in lines]
    for line in problems:
        warnings.warn(line, stacklevel=2)
    return problems


@dataclass
class TrainingTables:
    """What 01 prepares for the axial branch: the level table, the localiser's samples and the coverage."""

    levels: pd.DataFrame
    keypoints: pd.DataFrame
    coverage: Coverage
    problems: list[str]


def prepare_training(
    paths: P.Paths, sagittal: pd.DataFrame, keypoints: pd.DataFrame, cfg: PreprocessConfig, progress: bool = True
) -> TrainingTables:
    """The training split's level table (from the ground-truth Sagittal T2 keypoints) and axial localiser samples,
    saved to ``WORK_DIR/tables`` (``axial_levels``, ``axial_keypoints``), and the samples' stacks and crops (from
    their true points) cached."""
    levels, coverage = build_level_table(paths, "train", sagittal, keypoints, cfg.axial_max_distance_mm, progress)
    save_table(paths, "axial_levels", levels)
    samples = save_table(paths, "axial_keypoints", keypoints_table(paths, levels))
    problems = cache_stacks(paths, "train", levels, cfg, points_by_level(samples), progress)
    return TrainingTables(levels, samples, coverage, problems)


# --- the picture ----------------------------------------------------------------------------------------------
@dataclass
class LevelPicture:
    """What ``viz.axial_levels_figure`` draws for one study (``level_picture`` gathers it)."""

    title: str
    sagittal: np.ndarray  # middle Sagittal T2 slice, float
    points: np.ndarray  # (5, 2) pixel x, y of each level's back-of-disc point on it
    planes: list[tuple[int, np.ndarray]]  # (level or -1, (2, 2) segment end points) of each axial slice, pixels
    slices: dict[int, tuple[np.ndarray, tuple[float, float], str]]  # level -> (assigned slice, point on it, caption)
    # level -> (2, 2) pixel x, y of the left and right subarticular points on its slice: the true ones (the level's
    # localiser sample) and the axial localisers' (an inference run's ``Prediction.axial_points``), where known
    true_points: dict[int, np.ndarray] = field(default_factory=dict)
    predicted_points: dict[int, np.ndarray] = field(default_factory=dict)


def plane_segment(series: AxialSeries, k: int, sagittal: Geometry, s: int, samples: int = 96) -> np.ndarray | None:
    """(2, 2) end points, in pixels of sagittal slice s, of where axial slice k crosses it inside both images."""
    g = sagittal
    normal = series.normals[k]
    rows, cols = g.shapes[s]
    row_dir, col_dir = g.orientations[s, :3] * g.pixel_spacing[s, 1], g.orientations[s, 3:] * g.pixel_spacing[s, 0]
    along_col = normal @ col_dir
    if abs(along_col) < 1e-6:
        return None  # the planes are parallel
    x = np.linspace(0, cols - 1, samples)
    y = -(normal @ (g.positions[s] - series.geometry.positions[k]) + x * (normal @ row_dir)) / along_col
    world = pixel_to_world(g.positions[s], g.orientations[s], g.pixel_spacing[s], x, y)
    inside = np.array([series.inside(k, series.pixel(k, w)) for w in world]) & (y >= 0) & (y < rows)
    if not inside.any():
        return None
    first, last = np.flatnonzero(inside)[[0, -1]]
    return np.array([[x[first], y[first]], [x[last], y[last]]])


def level_picture(
    paths: P.Paths,
    split: str,
    study_id: int,
    sagittal: pd.DataFrame,
    keypoints: pd.DataFrame,
    max_distance_mm: float,
    samples: pd.DataFrame | None = None,
    predicted: pd.DataFrame | None = None,
) -> LevelPicture:
    """The middle Sagittal T2 slice with every axial slice plane drawn across it, coloured by assigned level, and
    each level's assigned axial slice with the level's point projected onto it (arguments as ``build_level_table``);
    with ``samples`` (``axial_keypoints``) the true subarticular points, with ``predicted`` (``Prediction.
    axial_points``) the axial localisers' ones, on the slices that show them."""
    candidates = t2_series_with_points(sagittal, keypoints).get(study_id, [])
    if not candidates:
        raise ValueError(f"study {study_id} has no Sagittal T2 series with keypoints to place its levels")
    t2_series_id = candidates[0]
    geometry = read_geometry(paths.series_dir(split, study_id, t2_series_id))
    points = sagittal_level_points(series_points(keypoints, t2_series_id), geometry)
    s = middle_slice(geometry)
    on_sagittal = world_to_pixel(geometry.positions[s], geometry.orientations[s], geometry.pixel_spacing[s], points)
    coverage = Coverage()
    series_ids = axial_series_table(paths, split).query("study_id == @study_id")["series_id"].tolist()
    planes, slices, shown = [], {}, {}
    for series in _study_series(paths, split, study_id, series_ids, coverage):
        matches = [m for m in match_levels(points, series, max_distance_mm) if m.assigned]
        level_of = {m.slice: m.level for m in matches}
        for k in range(len(series)):
            segment = plane_segment(series, k, geometry, s)
            if segment is not None:
                planes.append((level_of.get(k, -1), segment))
        for m in matches:
            if m.level not in slices:
                image = read_slice(series.geometry.files[m.slice])
                caption = f"series {series.series_id} #{series.instance_numbers[m.slice]}, {m.distance_mm:+.1f} mm"
                slices[m.level] = (image, m.xy, caption)
                shown[m.level] = (series.series_id, int(series.instance_numbers[m.slice]), image.shape)
    picture = LevelPicture(
        f"study {study_id}: axial slices per level", read_slice(geometry.files[s]), on_sagittal, planes, slices
    )
    for level, (series_id, instance, shape) in shown.items():
        scale = np.array([shape[1], shape[0]])  # relative x by columns, y by rows
        if samples is not None:
            true = points_by_level(samples[samples["instance_number"] == instance]).get((series_id, LEVEL_NAMES[level]))
            if true is not None:
                picture.true_points[level] = true * scale
        if predicted is not None:
            rows = predicted[(predicted["series_id"] == series_id) & (predicted["instance_number"] == instance)]
            if len(rows):
                picture.predicted_points[level] = (
                    rows[list(AXIAL_POINT_COLUMNS)].to_numpy(float)[0].reshape(2, 2) * scale
                )
    return picture
