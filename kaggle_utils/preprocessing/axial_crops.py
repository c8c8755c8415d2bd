"""An axial level's arrays: its stack of native slices for the axial localiser, and its crops for the axial
classifier, cut from its left and right subarticular points: the canal between the two points and each lateral recess,
sized in mm, the right one mirrored so that one model reads both sides; written for every assigned level of the
training split (``prepare_training``), the stacks ``PreprocessConfig.axial_stack_slices`` long, from the level's block
only.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils.core import paths as P
from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.labels import level_slug
from kaggle_utils.io.dicom import SeriesError, read_slice
from kaggle_utils.io.tables import save_table
from kaggle_utils.preprocessing.axial_levels import Coverage, build_level_table, stack_instances
from kaggle_utils.preprocessing.axial_samples import SampleChecks, keypoints_table, points_by_level
from kaggle_utils.preprocessing.cache import cache_is_current, remove_partial_files, save_atomic
from kaggle_utils.preprocessing.intensity import intensity_window, resize_slice, to_uint8

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
    slices: list[np.ndarray],
    points: np.ndarray,
    spacing: np.ndarray,
    window: tuple[float, float],
    cfg: PreprocessConfig,
) -> np.ndarray:
    """(3, n, size, size) uint8: the centre, left and (mirrored) right crops of every slice of a level's stack, from
    its left and right points (2, 2), relative to the image (x by columns, y by rows); each slice is cut with its own
    size and PixelSpacing (``spacing``: (n, 2) row, column mm, or one (2,) for all), so a neighbour with another
    matrix shows the same millimetres. The crops' sides in mm and their size in pixels are ``cfg``'s
    (``axial_canal_crop_mm``, ``axial_recess_crop_mm``, ``img_size``)."""
    spacings = np.broadcast_to(np.asarray(spacing, np.float64), (len(slices), 2))
    left, right = np.asarray(points, np.float64)
    canal, recess = cfg.axial_canal_crop_mm, cfg.axial_recess_crop_mm
    boxes = ((left + right) / 2, canal), (left, recess), (right, recess)
    size = cfg.img_size

    def cut(image: np.ndarray, mm_per_px: np.ndarray, centre: np.ndarray, mm: float) -> np.ndarray:
        scale = np.array([image.shape[1], image.shape[0]], np.float64)
        return square_crop(image, centre * scale, mm, mm_per_px, size)

    crops = np.stack(
        [np.stack([cut(image, px, c, mm) for image, px in zip(slices, spacings, strict=True)]) for c, mm in boxes]
    )
    crops[2] = crops[2][..., ::-1].copy()  # the right recess mirrored onto the left one's side
    return to_uint8(crops, window)


def slice_spacings(levels: pd.DataFrame, instances: list[int]) -> np.ndarray:
    """(n, 2) PixelSpacing (row, column mm) of the slices ``instances`` of one series' level table."""
    by_instance = levels.drop_duplicates("instance_number").set_index("instance_number")
    return by_instance.loc[list(instances), ["row_mm", "column_mm"]].to_numpy(np.float64)


def level_stack(slices: list[np.ndarray], size: int, window: tuple[float, float]) -> np.ndarray:
    """(n, size, size) uint8: a level's native slices as the axial localiser sees them."""
    return np.stack([to_uint8(resize_slice(image, size), window) for image in slices])


@dataclass(frozen=True)
class LevelJob:
    """One assigned level of an axial series: its slices (instances, top to bottom), where its stack goes, and, with
    its two points (relative, left then right), where its crops go and each slice's PixelSpacing ((n, 2) row,
    column)."""

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


def cut_stacks(job: StackJob, cfg: PreprocessConfig) -> list[str]:
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
            window = intensity_window(stack, cfg.percentiles)
            if level.stack_out is not None:
                save_atomic(level.stack_out, level_stack(stack, cfg.img_size, window))
            if level.crops_out is not None:
                save_atomic(level.crops_out, level_crops(stack, level.points, level.spacing, window, cfg))
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
    current = {root: cache_is_current(paths.cache_dir(root), cfg) for root in (P.AXIAL_STACKS, P.AXIAL_CROPS)}
    for root in current:
        remove_partial_files(paths.cache_dir(root))
    points = points or {}
    jobs = []
    for (study_id, series_id), series_levels in levels.groupby(["study_id", "series_id"]):
        todo = []
        for row in series_levels[series_levels["assigned"]].itertuples():
            key = (int(study_id), int(series_id), level_slug(row.level), int(row.instance_number))
            stack, crops = paths.axial_stack(*key), paths.axial_crops(*key)
            level_points = points.get((int(series_id), row.level))
            need_stack = not (current[P.AXIAL_STACKS] and stack.exists())
            need_crops = level_points is not None and not (current[P.AXIAL_CROPS] and crops.exists())
            if need_stack or need_crops:
                instances = stack_instances(series_levels, int(series_id), int(row.instance_number), cfg)
                todo.append(
                    LevelJob(
                        instances=tuple(instances),
                        stack_out=stack if need_stack else None,
                        crops_out=crops if need_crops else None,
                        points=level_points,
                        spacing=slice_spacings(series_levels, instances),
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
    args = (jobs, [cfg] * len(jobs))
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
    checks: SampleChecks


def prepare_training(
    paths: P.Paths, sagittal: pd.DataFrame, keypoints: pd.DataFrame, cfg: PreprocessConfig, progress: bool = True
) -> TrainingTables:
    """The training split's level table (from the ground-truth Sagittal T2 keypoints) and axial localiser samples,
    saved to ``WORK_DIR/tables`` (``axial_levels``, ``axial_keypoints``, and ``axial_checks``: what the samples kept
    and left out, per study), and the samples' stacks and crops (from their points) cached."""
    levels, coverage = build_level_table(paths, "train", sagittal, keypoints, cfg.axial_max_distance_mm, progress)
    save_table(paths, "axial_levels", levels)
    table, checks = keypoints_table(paths, levels)
    samples = save_table(paths, "axial_keypoints", table)
    save_table(paths, "axial_checks", checks.table)
    problems = cache_stacks(paths, "train", levels, cfg, points_by_level(samples), progress)
    return TrainingTables(levels, samples, coverage, problems, checks)
