"""Deterministic preprocessing: stage-1 volumes and stage-2 per-level crops, cached as uint8 arrays.

Stage 1: every slice of a sagittal series resized to 256x256 (aspect not kept), windowed with the
series' 1st/99th percentiles of the native pixels -> ``(256, 256, N)`` uint8, slices left to right.

Stage 2: per disc level one crop of every slice, from the level's two keypoints (the solution's
geometry, see ``level_boxes``) -> ``(256, 256, 5, N)`` uint8. Rotation, crop, resize and centred
padding are one affine warp per slice (T2), which is both faster and sharper than rotating the whole stack
and resizing the crop in two interpolation steps; unrotated T1 boxes are cropped and resized directly.
Missing or off-image keypoints leave their level black with a warning instead of failing the series.
One function serves training crops (keypoints from the coordinate table) and inference crops (keypoints
predicted by stage 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils.config import PreprocessConfig
from kaggle_utils.dicom import Series, SeriesError, read_series
from kaggle_utils.paths import Paths

T2_PLANE, T1_PLANE = "t2", "t1"


# --- intensity -----------------------------------------------------------------------------------
def intensity_window(slices: Iterable[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) window of a series: percentiles over all native pixels of all slices together."""
    values = np.concatenate([np.asarray(s, np.float32).ravel() for s in slices])
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the window and scale to 0..255. A constant series (empty window) becomes all zeros."""
    low, high = window
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    scaled = (np.asarray(image, np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


# --- stage 1 -------------------------------------------------------------------------------------
def resize_slice(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one slice to size x size, ignoring the aspect ratio (relative coordinates stay valid)."""
    h, w = image.shape
    # Area averaging when shrinking avoids aliasing; Lanczos when enlarging keeps edges sharp.
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LANCZOS4
    return cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=interpolation)


def stage1_volume(series: Series, cfg: PreprocessConfig) -> np.ndarray:
    """``(size, size, N)`` uint8: every slice resized, windowed with the series' percentiles."""
    window = intensity_window(series.slices, cfg.percentiles)
    resized = np.stack([resize_slice(s, cfg.img_size) for s in series.slices], axis=-1)
    return to_uint8(resized, window)


# --- stage 2 geometry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelBox:
    """One level's crop in a slice of a given size: rotate by ``angle`` (degrees, counter-clockwise as
    displayed, about the image centre), then take ``[left, right) x [top, bottom)`` of the rotated image."""

    angle: float
    left: int
    top: int
    right: int
    bottom: int

    @property
    def empty(self) -> bool:
        return self.right - self.left < 2 or self.bottom - self.top < 2


EMPTY_BOX = LevelBox(angle=0.0, left=0, top=0, right=0, bottom=0)
"""The box of a level without usable keypoints: its crops stay black."""


def sort_level_points(points: np.ndarray) -> np.ndarray:
    """(5, 2, 2) relative (x, y): the two points of each level ordered by x (front of the disc first on T2)."""
    points = np.asarray(points, np.float64)
    order = np.argsort(points[:, :, 0], axis=1, kind="stable")
    return np.take_along_axis(points, order[:, :, None], axis=1)


def level_boxes(points: np.ndarray, plane: str, width: int, height: int, cfg: PreprocessConfig) -> list[LevelBox]:
    """The solution's crop of each level in a ``width x height`` slice, from relative keypoints (5, 2, 2).

    With D = median disc width (front-back distance) and S = median spacing between levels:
    T2/STIR crops are rotated so the front->back line is horizontal and span
    x in [b - 1.125 D, b + 0.375 D], y in b +- 1.3 S around the back point b;
    T1 crops are not rotated and span the midpoint of the two foramina +- 1.25 S (relative to the
    width) horizontally and +- S vertically. Boxes are clamped to the image, not padded.
    Levels with a missing (non-finite) point get an empty box; D and S come from the levels inside the image.
    """
    if plane not in (T2_PLANE, T1_PLANE):
        raise ValueError(f"no crop geometry for plane {plane!r}")
    points = sort_level_points(points)
    valid = np.isfinite(points).all(axis=(1, 2))
    inside = valid & ((points >= 0) & (points <= 1)).all(axis=(1, 2))
    # One level far off the image must not distort the crop size of the others.
    x_pct, y_pct = _crop_scale(points, inside if inside.sum() >= 2 else valid, plane, cfg)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    size = np.array([width, height], np.float64)
    boxes = []
    for ok, a, b in zip(valid, points[:, 0] * size, points[:, 1] * size, strict=True):
        if not (ok and np.isfinite(x_pct) and np.isfinite(y_pct)):
            boxes.append(EMPTY_BOX)
            continue
        if plane == T2_PLANE:
            angle = float(np.degrees(np.arctan2(-(b[1] - a[1]), b[0] - a[0])))
            bx, by = rotate_points(b[None], -angle, centre)[0]
            x0 = int(bx) - cfg.t2_offset_mult * width * x_pct
            y0 = int(by)
        else:
            angle = 0.0
            x0, y0 = (a + b) / 2
        # Clamp before int(): far-off keypoints must give an empty box, not an overflow.
        boxes.append(
            LevelBox(
                angle=-angle,
                left=int(np.clip(x0 - width * x_pct, 0, width)),
                right=int(np.clip(x0 + width * x_pct, 0, width)),
                top=int(np.clip(y0 - height * y_pct, 0, height)),
                bottom=int(np.clip(y0 + height * y_pct, 0, height)),
            )
        )
    return boxes


def _crop_scale(points: np.ndarray, valid: np.ndarray, plane: str, cfg: PreprocessConfig) -> tuple[float, float]:
    """(x_pct, y_pct) half-sizes relative to the image from the valid levels; NaN when they cannot tell."""
    levels = np.flatnonzero(valid)
    if len(levels) < 2:
        return float("nan"), float("nan")
    front, back = points[levels, 0], points[levels, 1]
    # Spacing per level step, so that a missing level in between does not double one spacing.
    steps = np.diff(levels)
    if plane == T2_PLANE:
        x_pct = cfg.t2_width_mult * np.median(back[:, 0] - front[:, 0])
        y_pct = cfg.t2_height_mult * np.median(np.abs(np.diff(back[:, 1])) / steps)
    else:
        y_pct = cfg.t1_height_mult * np.median(np.abs(np.diff(front[:, 1])) / steps)
        x_pct = cfg.t1_width_mult * y_pct
    return float(x_pct), float(y_pct)


def rotation_matrix(angle: float, centre: np.ndarray) -> np.ndarray:
    """2x3 matrix rotating pixel coordinates by ``angle`` degrees (counter-clockwise as displayed)."""
    return cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)


def rotate_points(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    matrix = rotation_matrix(angle, centre)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_layout(box: LevelBox, out_size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, pad_x, pad_y): the crop's size after the longest-side resize and its centred offset."""
    crop_w, crop_h = box.right - box.left, box.bottom - box.top
    scale = out_size / max(crop_w, crop_h)
    new_w, new_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    return new_w, new_h, (out_size - new_w) // 2, (out_size - new_h) // 2


def crop_warp(box: LevelBox, width: int, height: int, out_size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The affine map from output pixels to source pixels for one box (rotation, crop, longest-side resize,
    centred padding), and the output region the crop fills (the rest is zero padding)."""
    new_w, new_h, pad_x, pad_y = crop_layout(box, out_size)
    # output pixel (u, v) -> rotated-image pixel q (pixel-centre convention of cv2.resize)
    sx, sy = (box.right - box.left) / new_w, (box.bottom - box.top) / new_h
    to_rotated = np.array([[sx, 0, box.left + (0.5 - pad_x) * sx - 0.5], [0, sy, box.top + (0.5 - pad_y) * sy - 0.5]])
    # rotated-image pixel -> source pixel: the inverse rotation
    inverse = cv2.invertAffineTransform(rotation_matrix(box.angle, np.array([(width - 1) / 2, (height - 1) / 2])))
    matrix = inverse[:, :2] @ to_rotated
    matrix[:, 2] += inverse[:, 2]
    return matrix.astype(np.float32), (slice(pad_y, pad_y + new_h), slice(pad_x, pad_x + new_w))


def crop_slice(image: np.ndarray, box: LevelBox, out_size: int) -> np.ndarray:
    """One slice's crop of one level (up to 4 channels): ``(out_size, out_size)`` float, zero outside the crop."""
    height, width = image.shape[:2]
    out = np.zeros((out_size, out_size) + image.shape[2:], np.float32)
    if box.empty:
        return out
    image = np.asarray(image, np.float32)
    if box.angle == 0:
        # No rotation (T1): crop and resize is the same single interpolation, and ~3x faster than a warp.
        new_w, new_h, pad_x, pad_y = crop_layout(box, out_size)
        crop = np.ascontiguousarray(image[box.top : box.bottom, box.left : box.right])
        resized = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)
        out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized.reshape((new_h, new_w) + image.shape[2:])
        return out
    matrix, region = crop_warp(box, width, height, out_size)
    warped = cv2.warpAffine(
        image,
        matrix,
        (out_size, out_size),
        flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,  # the solution's rotation border
    )
    out[region] = warped.reshape(out.shape)[region]
    return out


def stage2_crops(series: Series, points: np.ndarray, plane: str, cfg: PreprocessConfig) -> np.ndarray:
    """``(size, size, 5, N)`` uint8 per-level crops of every slice from relative keypoints (5, 2, 2).

    Keypoints that are missing, degenerate or outside the image never fail the series: the levels they
    leave without a usable box stay black, and a warning names the series and the levels.
    """
    points = np.asarray(points, np.float64)
    window = intensity_window(series.slices, cfg.percentiles)
    size = cfg.img_size
    # Level-major while filling, so each chunk lands in one block of memory; (H, W, level, slice) at the end.
    by_level = np.zeros((len(points), size, size, series.n_slices), np.float32)
    empty: set[int] = set()
    for shape, indices in _slices_by_shape(series):
        height, width = shape
        stack = np.stack([series.slices[i] for i in indices], axis=-1)
        for level, box in enumerate(level_boxes(points, plane, width, height, cfg)):
            if box.empty:
                empty.add(level)
                continue
            # cv2's Lanczos warp takes at most 4 channels at once
            for start in range(0, len(indices), 4):
                chunk = indices[start : start + 4]
                by_level[level][:, :, chunk] = crop_slice(stack[:, :, start : start + 4], box, size).reshape(
                    size, size, len(chunk)
                )
    _warn_about_points(series, points, sorted(empty))
    return np.ascontiguousarray(_window_crops(by_level, window).transpose(1, 2, 0, 3))


def _warn_about_points(series: Series, points: np.ndarray, empty: list[int]) -> None:
    finite = np.isfinite(points)
    outside = sorted({int(lv) for lv in np.flatnonzero((finite & ((points < 0) | (points > 1))).any(axis=(1, 2)))})
    if outside:
        warnings.warn(f"{series.folder}: keypoints outside the image at levels {outside}", stacklevel=3)
    if empty:
        missing = sorted(int(lv) for lv in np.flatnonzero(~finite.all(axis=(1, 2))))
        warnings.warn(
            f"{series.folder}: empty crop at levels {empty} (degenerate, missing {missing} or off-image keypoints); "
            "left black",
            stacklevel=3,
        )


def _window_crops(crops: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    padding = crops == 0
    out = to_uint8(crops, window)
    out[padding] = 0  # padding stays black whatever the window (the solution's pad pixels clip to 0)
    return out


def _slices_by_shape(series: Series) -> list[tuple[tuple[int, int], list[int]]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(series.slices):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.items())


# --- caching and parallel runs -------------------------------------------------------------------
def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half an array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def params_key(cfg: PreprocessConfig) -> str:
    """A short hash of the parameters that change the cached arrays."""
    relevant = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("num_workers", "n_folds", "fold_seed")}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def cache_is_current(root: Path, cfg: PreprocessConfig) -> bool:
    """True when the arrays under ``root`` were made with these parameters.

    Otherwise the arrays there are stale: they are deleted before the new parameters are recorded, so that a
    run interrupted after this call cannot leave old arrays that the new stamp would vouch for.
    """
    stamp = root / "params.json"
    key = params_key(cfg)
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return True
    root.mkdir(parents=True, exist_ok=True)
    stale = list(root.glob("*/*.npy"))
    if stale:
        print(f"{root}: parameters changed, removing {len(stale)} stale arrays")
    for path in stale:
        path.unlink()
    stamp.write_text(json.dumps({"key": key, "params": dataclasses.asdict(cfg)}, indent=1))
    return False


def remove_partial_files(root: Path) -> int:
    """Delete the temporary files an interrupted :func:`save_atomic` left under ``root``; returns how many."""
    partial = list(root.glob("*/.*.tmp.npy")) if root.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


@dataclass(frozen=True)
class SeriesJob:
    """One series to preprocess: where to read it, where to write, and its keypoints for stage 2 (if any)."""

    study_id: int
    series_id: int
    plane: str
    folder: Path
    stage1_out: Path | None
    stage2_out: Path | None
    points: np.ndarray | None  # (5, 2, 2) relative


def run_job(job: SeriesJob, cfg: PreprocessConfig) -> str | None:
    """Preprocess one series; returns a warning line instead of raising, so one bad series never stops a run."""
    try:
        series = read_series(job.folder)
        if job.stage1_out is not None:
            save_atomic(job.stage1_out, stage1_volume(series, cfg))
        if job.stage2_out is not None and job.points is not None:
            save_atomic(job.stage2_out, stage2_crops(series, job.points, job.plane, cfg))
    except (SeriesError, ValueError, cv2.error) as error:
        return f"study {job.study_id} series {job.series_id}: {error}"
    return None


def run_jobs(jobs: list[SeriesJob], cfg: PreprocessConfig, desc: str = "preprocess") -> list[str]:
    """Run jobs in parallel over processes with a progress bar; returns the warnings of failed series."""
    problems: list[str] = []
    worker: Callable[[SeriesJob], str | None] = _JobRunner(cfg)
    if cfg.num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.num_workers) as pool:
            results = list(tqdm(pool.map(worker, jobs, chunksize=1), total=len(jobs), desc=desc))
    else:
        results = [worker(job) for job in tqdm(jobs, desc=desc)]
    problems = [r for r in results if r]
    for line in problems:
        warnings.warn(line, stacklevel=2)
    return problems


class _JobRunner:
    """Picklable callable for the process pool."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, job: SeriesJob) -> str | None:
        return run_job(job, self.cfg)


def plan_jobs(
    paths: Paths, series: pd.DataFrame, points: dict[int, np.ndarray], cfg: PreprocessConfig
) -> list[SeriesJob]:
    """The work left to do for a series table (``study_id, series_id, plane, split``): arrays that exist and were
    made with the same parameters are skipped, so an interrupted run resumes where it stopped. Stage-2 crops are
    made for the series that have keypoints in ``points`` (series id -> (5, 2, 2) relative)."""
    stage1_current = cache_is_current(paths.work_dir / "stage1", cfg)
    stage2_current = cache_is_current(paths.work_dir / "stage2", cfg)
    for root in ("stage1", "stage2"):  # no job runs yet, so any temporary file is a leftover
        remove_partial_files(paths.work_dir / root)
    jobs = []
    for row in series.itertuples():
        stage1 = paths.stage1_array(row.study_id, row.series_id)
        stage2 = paths.stage2_array(row.study_id, row.series_id)
        need1 = not (stage1_current and stage1.exists())
        need2 = row.series_id in points and not (stage2_current and stage2.exists())
        if need1 or need2:
            jobs.append(
                SeriesJob(
                    study_id=row.study_id,
                    series_id=row.series_id,
                    plane=row.plane,
                    folder=paths.series_dir(row.split, row.study_id, row.series_id),
                    stage1_out=stage1 if need1 else None,
                    stage2_out=stage2 if need2 else None,
                    points=points.get(row.series_id),
                )
            )
    return jobs
