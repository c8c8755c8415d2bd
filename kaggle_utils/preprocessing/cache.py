"""The preprocessed arrays on disk: one job per series (its stage-1 volume and stage-2 crops), planned from what is
missing or was made with other parameters (a key of the parameters and ``ARRAYS_VERSION``), run over processes,
written atomically, so an interrupted run resumes with only the missing work and a bad series is reported, not
fatal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.paths import STAGE1, STAGE2, Paths
from kaggle_utils.io.dicom import SeriesError, read_series
from kaggle_utils.preprocessing.intensity import intensity_window
from kaggle_utils.preprocessing.sagittal import check_series, stage1_volume, stage2_crops, weighting_mismatch


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half an array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


ARRAYS_VERSION = 4
"""Part of the cache key: raised when the code changes the arrays made from the same parameters (2: T2 crops
rotated and resized in the solution's two steps instead of one combined warp; 3: slices before rows and columns,
``(N, H, W)`` and ``(5, N, H, W)``, so that a loader copies a run of slices as whole contiguous blocks; 4: T1 level
spacing measured between the midpoints of the two foramina)."""


_KEYLESS_FIELDS = ("num_workers", "n_folds", "fold_seed", "folds_file")
"""Preprocessing fields that do not change any cached array."""


def params_key(cfg: PreprocessConfig) -> str:
    """A short hash of the parameters that change the cached arrays, and of :data:`ARRAYS_VERSION`."""
    relevant = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _KEYLESS_FIELDS}
    relevant["arrays_version"] = ARRAYS_VERSION
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def cache_is_current(root: Path, cfg: PreprocessConfig) -> bool:
    """True when the arrays under ``root`` were made with these parameters.

    Otherwise the arrays there are stale: they are deleted before the new parameters are recorded, so that a
    run interrupted after this call cannot leave old arrays that the new stamp would vouch for.
    """
    stamp = root / "params.json"
    key = params_key(cfg)
    if stamp_matches(stamp, key):
        return True
    root.mkdir(parents=True, exist_ok=True)
    stale = list(root.glob("*/*.npy"))
    if stale:
        print(f"{root}: parameters changed, removing {len(stale)} stale arrays")
    for path in stale:
        path.unlink()
    write_stamp(stamp, key, params=dataclasses.asdict(cfg))
    return False


def stamp_matches(stamp: Path, key: str) -> bool:
    """True when the stamp file ``stamp`` (``write_stamp``) records ``key``."""
    return stamp.exists() and json.loads(stamp.read_text()).get("key") == key


def write_stamp(stamp: Path, key: str, **record: object) -> None:
    """Record that the arrays a stamp vouches for were made under ``key`` (with what made them, for reading)."""
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key, **record}, indent=1))


def remove_partial_files(root: Path) -> int:
    """Delete the temporary files an interrupted :func:`save_atomic` left under ``root``; returns how many."""
    partial = list(root.glob("*/.*.tmp.npy")) if root.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


@dataclass(frozen=True)
class SeriesJob:
    """One series to preprocess: where to read it, where to write, and its keypoints for stage 2 (if any); with
    ``extra_crops``, more crop sets (output, (5, 2, 2) relative keypoints) from the same reading (``stage1_error``)."""

    study_id: int
    series_id: int
    view: str
    folder: Path
    stage1_out: Path | None
    stage2_out: Path | None
    points: np.ndarray | None  # (5, 2, 2) relative
    extra_crops: tuple[tuple[Path, np.ndarray], ...] = ()


@dataclass(frozen=True)
class JobReport:
    """What a job could not do: why its series was not cached (None: it was), and what it has to say (the files it
    left out, an order it could only take from the instance numbers)."""

    failure: str | None = None
    said: tuple[str, ...] = ()


def run_job(job: SeriesJob, cfg: PreprocessConfig) -> JobReport:
    """Preprocess one series; a failure is reported instead of raised, so one bad series never stops a run, and a
    file left out of the series (``Series.dropped``) or anything odd ``check_series`` notes is named."""
    where = f"study {job.study_id} series {job.series_id}"
    try:
        series = read_series(job.folder)
        notes = check_series(series, job.view)
        if (mismatch := weighting_mismatch(series, job.view)) is not None:
            notes.append(f"{mismatch[1]}: trained as listed all the same")
        window = intensity_window(series.slices, cfg.percentiles)  # once for both stages
        if job.stage1_out is not None:
            save_atomic(job.stage1_out, stage1_volume(series, cfg, window))
        if job.stage2_out is not None and job.points is not None:
            save_atomic(job.stage2_out, stage2_crops(series, job.points, job.view, cfg, window))
        for out, points in job.extra_crops:
            save_atomic(out, stage2_crops(series, points, job.view, cfg, window))
    except (SeriesError, ValueError, cv2.error) as error:
        return JobReport(failure=f"{where}: not cached: {error}")
    said = [f"{where}: slice left out: {line}" for line in series.dropped] + [f"{where}: {note}" for note in notes]
    return JobReport(said=tuple(said))


def run_jobs(jobs: list[SeriesJob], cfg: PreprocessConfig, desc: str = "preprocess") -> list[str]:
    """Run jobs in parallel over processes with a progress bar; returns the lines of the series that failed (each
    also a warning, as is each file left out of a series)."""
    worker: Callable[[SeriesJob], JobReport] = _JobRunner(cfg)
    if cfg.num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.num_workers) as pool:
            reports = list(tqdm(pool.map(worker, jobs, chunksize=1), total=len(jobs), desc=desc))
    else:
        reports = [worker(job) for job in tqdm(jobs, desc=desc)]
    for line in (line for report in reports for line in report.said):
        warnings.warn(line, stacklevel=2)
    problems = [report.failure for report in reports if report.failure]
    for line in problems:
        warnings.warn(line, stacklevel=2)
    return problems


class _JobRunner:
    """Picklable callable for the process pool."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, job: SeriesJob) -> JobReport:
        return run_job(job, self.cfg)


def plan_jobs(
    paths: Paths, series: pd.DataFrame, points: dict[int, np.ndarray], cfg: PreprocessConfig
) -> list[SeriesJob]:
    """The work left to do for a series table (``study_id, series_id, view, split``): arrays that exist and were
    made with the same parameters are skipped, so an interrupted run resumes where it stopped. Stage-2 crops are
    made for the series that have keypoints in ``points`` (series id -> (5, 2, 2) relative)."""
    stage1_current = cache_is_current(paths.cache_dir(STAGE1), cfg)
    stage2_current = cache_is_current(paths.cache_dir(STAGE2), cfg)
    for root in (STAGE1, STAGE2):  # no job runs yet, so any temporary file is a leftover
        remove_partial_files(paths.cache_dir(root))
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
                    view=row.view,
                    folder=paths.series_dir(row.split, row.study_id, row.series_id),
                    stage1_out=stage1 if need1 else None,
                    stage2_out=stage2 if need2 else None,
                    points=points.get(row.series_id),
                )
            )
    return jobs
