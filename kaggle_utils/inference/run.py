"""An inference run from raw DICOMs: keypoints -> crops -> classifiers with TTA -> routing -> a complete submission.

Per series: read the DICOMs once, build the stage-1 volume, predict the keypoints (median over the
view's localisers), crop every level with the same function as training, and run every stage-2 model
of that view with all TTA rotations in one forward pass. Predictions are then averaged per row id and
routed as the solution does: subarticular from ``su``; spinal the mean of ``sp1``, ``sp2``, ``su``;
foraminal from the T1 model when the study has a Sagittal T1, else from the T2 models (each preset's
``routes``). The axial branch: a study's Sagittal T2 keypoints place its levels on its Axial T2 slices, whose
stacks are localised, cropped and classified by the axial presets; its spinal and subarticular rows meet the
sagittal ones in the blend fit out of fold (``blend``). Every study gets its 25 rows: what no model
covers falls back to the class priors of the training labels. Cross-validation and the scores are in ``crossval``.

A run is an ``Inference``: its inputs, and each step from a study's files to its rows as a method. Studies are
predicted one at a time and apart: a fault in one study's files costs only that study, is reported when it is found
(``faults.FaultLog``) and is summed up at the end (``Prediction.summary``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kaggle_utils.core.config import InferConfig, PreprocessConfig
from kaggle_utils.core.constants import LEVEL_NAMES, SEVERITY_COLUMNS
from kaggle_utils.core.faults import FaultLog
from kaggle_utils.core.labels import condition_rows, level_frame
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.views import LEVEL_VIEW, view_named
from kaggle_utils.inference.axial_branch import (
    AXIAL_POINT_COLUMNS,
    axial_coverage,
    axial_points,
    axial_series_ids,
    merge_axial,
    split_axial,
)
from kaggle_utils.inference.axial_check import check_points
from kaggle_utils.inference.blend import Blend, blend_rows, boost_max_severe, load_blend
from kaggle_utils.inference.ensemble import (
    ModelSet,
    fold_banks,
    model_routes,
    model_sets,
    predict_keypoints,
    predict_levels,
)
from kaggle_utils.inference.submission import (
    Prediction,
    complete_submission,
    prior_submission,
    route,
    rows_without_prediction,
)
from kaggle_utils.io.dicom import Series, SeriesError, read_series, read_slice
from kaggle_utils.io.tables import points_frame
from kaggle_utils.preprocessing.axial_crops import level_crops, level_stack, slice_spacings
from kaggle_utils.preprocessing.axial_levels import (
    AxialSeries,
    level_table,
    read_axial_series,
    sagittal_level_points,
    stack_instances,
)
from kaggle_utils.preprocessing.intensity import intensity_window
from kaggle_utils.preprocessing.sagittal import check_series, header_view, stage1_volume, stage2_crops

_UNPLACED = "no Sagittal T2 series of the study placed its levels"
"""Why a study's Axial T2 series go unused: its levels are found on them from the Sagittal T2 keypoints."""


class StageTimer:
    """Wall seconds per inference stage, summed over series: ``with timer("crop"): ...``.

    Each stage ends by copying its result to the host (``.cpu()``), so GPU work is inside the stage that queued it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, other: StageTimer) -> None:
        for stage, seconds in other.seconds.items():
            self.seconds[stage] += seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


@contextmanager
def _untimed(stage: str) -> Iterator[None]:
    yield


Timed = Callable[[str], AbstractContextManager[None]]


def split_by_study(series: pd.DataFrame, n_shards: int) -> list[pd.DataFrame]:
    """``series`` in ``n_shards`` parts of whole studies, dealt in turn in the table's order (balanced to one study)."""
    studies = list(dict.fromkeys(series["study_id"]))
    shard_of = {study: i % n_shards for i, study in enumerate(studies)}
    shard = series["study_id"].map(shard_of)
    return [series[shard == i] for i in range(n_shards)]


@dataclass
class StudyRows:
    """What one study's series gave: keypoint-table frames and ``level_frame`` rows (with ``preset``)."""

    keypoints: list[pd.DataFrame] = field(default_factory=list)
    levels: list[pd.DataFrame] = field(default_factory=list)


@dataclass
class Inference:
    """One inference run: its inputs (where the data is, the models, one set per device, the configs) and, as
    methods, every step from a study's files to its rows.

    Each study is predicted on its own: a series that cannot be read or predicted (a bad file, header or geometry,
    too few usable slices, or anything a broken input makes the code raise) is reported in ``faults``, naming the
    study, the series and the file, and costs only that series (its rows then come from the study's other series,
    or from the class priors); the other studies' predictions are exactly what they would be without it.

    ``given_points`` (series id -> (5, 2, 2) relative, e.g. the ground truth for the CV's oracle) replace the
    localisers' keypoints of the series they cover; their rows say ``source=given``. ``timer`` (the benchmark's)
    adds up the stages read, volume, keypoints, crop and classify, and the axial branch's axial_read, axial_crop
    and axial_models."""

    paths: Paths
    models: ModelSet | Sequence[ModelSet]
    pre_cfg: PreprocessConfig = field(default_factory=PreprocessConfig)
    infer_cfg: InferConfig = field(default_factory=InferConfig)
    given_points: Mapping[int, np.ndarray] | None = None
    timer: StageTimer | None = None
    faults: FaultLog = field(default_factory=FaultLog)

    @property
    def sets(self) -> list[ModelSet]:
        return model_sets(self.models)

    # --- whole runs -----------------------------------------------------------------------------------------
    def predict(
        self,
        series: pd.DataFrame,
        study_ids: list[int],
        priors: pd.DataFrame,
        blend: Blend | None = None,
        desc: str = "inference",
    ) -> Prediction:
        """The sagittal ``series`` and the studies' axial series predicted, and a 25-row submission completed for
        every study in ``study_ids``: the sagittal and axial predictions of a row combined by ``blend`` (default:
        the models' ``load_blend``), the rows no model predicted from ``priors``."""
        split = str(series["split"].iloc[0]) if len(series) else "test"
        axial_series = axial_series_ids(self.paths, split)
        keypoints, levels = self.predict_table(series, axial_series, desc)
        self._report_unlisted(series, study_ids, axial_series)
        sagittal_levels, axial_levels = split_axial(levels, self.models)
        placed = axial_points(axial_levels)
        if self.sets[0].presets_for(LEVEL_VIEW):
            print(axial_coverage(placed, study_ids, axial_series))
        blend = blend or (load_blend(self.paths) if len(axial_levels) else Blend())
        sagittal, axial, blended = blend_folds(levels, self.models, blend)
        return Prediction(
            submission=complete_submission(blended, study_ids, priors),
            baseline=prior_submission(study_ids, priors),
            keypoints=keypoints,
            sagittal=complete_submission(sagittal, study_ids, priors),
            axial=axial,
            axial_points=placed,
            from_priors=rows_without_prediction(blended, study_ids),
            faults=self.faults.frame(),
            series=series[[c for c in ("study_id", "series_id", "view") if c in series]],
        )

    def predict_table(
        self, series: pd.DataFrame, axial_series: Mapping[int, list[int]] | None = None, desc: str = "inference"
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Keypoints and per-preset level probabilities of every series of a table (``study_id, series_id, view,
        split``). With ``axial_series`` (study id -> its Axial T2 series ids, ``axial_series_ids``) and axial
        models, each study's first Sagittal T2 series places its levels on them (``predict_axial``): the axial
        presets' rows carry the assigned slice's ``distance_mm``.

        With one model set per device (``load_models_on``), the studies are split over the devices, one thread
        each: a thread's GPU work, cv2 and numpy run without the GIL, so the cards and the CPU stages overlap, and
        the models stay in this process (no second copy in host memory, no pickling). The timer sums over them."""
        sets = self.sets
        if len(sets) == 1:
            return self._predict_shard(series, sets[0], axial_series, desc, self.timer)
        shards = split_by_study(series, len(sets))
        timers = [StageTimer() for _ in sets]
        with ThreadPoolExecutor(len(sets)) as pool:
            jobs = [
                pool.submit(self._predict_shard, shard, models, axial_series, f"{desc} [{i}]", timer, i)
                for i, (shard, models, timer) in enumerate(zip(shards, sets, timers, strict=True))
            ]
            parts = [job.result() for job in jobs]
        if self.timer is not None:
            for shard_timer in timers:
                self.timer.add(shard_timer)
        return _concat([p[0] for p in parts]), _concat([p[1] for p in parts])

    def _predict_shard(
        self,
        series: pd.DataFrame,
        models: ModelSet,
        axial_series: Mapping[int, list[int]] | None,
        desc: str,
        timer: StageTimer | None,
        position: int = 0,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        timed = timer or _untimed
        rows = StudyRows()
        studies = series.groupby("study_id", sort=False)
        for study_id, study in tqdm(studies, total=studies.ngroups, desc=desc, position=position):
            ids = None if axial_series is None else axial_series.get(int(study_id), [])
            found = self.predict_study(int(study_id), study, models, ids, timed)
            rows.keypoints += found.keypoints
            rows.levels += found.levels
        return _concat(rows.keypoints), _concat(rows.levels)

    # --- one study ------------------------------------------------------------------------------------------
    def predict_study(
        self,
        study_id: int,
        series: pd.DataFrame,
        models: ModelSet,
        axial_ids: list[int] | None = None,
        timed: Timed = _untimed,
    ) -> StudyRows:
        """A study's rows from its sagittal ``series`` (in table order) and, when ``axial_ids`` are given and axial
        models loaded, from its Axial T2 series, placed by its first Sagittal T2 series that could be predicted."""
        found = StudyRows()
        axial_ready = axial_ids is not None and LEVEL_VIEW in models.stage1 and models.presets_for(LEVEL_VIEW)
        for row in series.itertuples():
            if row.view not in models.stage1:
                continue
            try:
                keypoints, levels, placing = self._predict_sagittal(row, models, timed)
            except SeriesError as error:
                self.faults.report(study_id, row.series_id, f"not used: {error}")
                continue
            except Exception as error:  # whatever a broken input makes the code raise costs only this series
                self.faults.report(study_id, row.series_id, f"not used after {type(error).__name__}: {error}")
                continue
            found.keypoints.append(keypoints)
            found.levels += levels
            if axial_ready and placing is not None:
                axial_ready = False  # the study's first Sagittal T2 series places its levels
                try:
                    found.levels += self.predict_axial(row.split, study_id, *placing, axial_ids, models, timed)
                except Exception as error:
                    self.faults.report(study_id, None, f"axial branch not used after {type(error).__name__}: {error}")
        if axial_ready and axial_ids:
            self.faults.report(study_id, None, f"axial series not used: {_UNPLACED}")
        return found

    def _report_unlisted(
        self, series: pd.DataFrame, study_ids: list[int], axial_series: Mapping[int, list[int]]
    ) -> None:
        """Each study that no sagittal series of ``series`` names (none listed, or none with an image folder), said
        with what that costs its Axial T2 series."""
        axial_models = bool(self.sets[0].presets_for(LEVEL_VIEW))
        for study_id in sorted(set(study_ids) - set(series["study_id"].astype("int64"))):
            axial = ", ".join(map(str, axial_series.get(study_id, []) if axial_models else []))
            cost = f": its Axial T2 series {axial} not used ({_UNPLACED})" if axial else ""
            self.faults.report(study_id, None, f"no sagittal series to read{cost}")

    def _predict_sagittal(
        self, row: Any, models: ModelSet, timed: Timed
    ) -> tuple[pd.DataFrame, list[pd.DataFrame], tuple[Series, np.ndarray] | None]:
        """One sagittal series, read as the view its header states (``header_view``): its keypoint rows, each
        preset's level rows, and, when it places the axial levels, the series with its keypoints."""
        with timed("read"):
            volume_series = read_series(self.paths.series_dir(row.split, row.study_id, row.series_id))
        for line in volume_series.dropped:
            self.faults.report(row.study_id, row.series_id, f"slice left out: {line}")
        view, why = header_view(volume_series, row.view)
        if view not in models.stage1:
            raise SeriesError(f"{why}, for which no models are loaded")
        for note in ([why] if why else []) + check_series(volume_series, view):
            self.faults.report(row.study_id, row.series_id, note)
        row = row._replace(view=view)
        given = None if self.given_points is None else self.given_points.get(row.series_id)
        with timed("volume"):
            window = intensity_window(volume_series.slices, self.pre_cfg.percentiles)  # shared with the crops
            volume = stage1_volume(volume_series, self.pre_cfg, window) if given is None else None
        with timed("keypoints"):
            points = predict_keypoints(volume, models.stage1[row.view]) if given is None else given
        keypoints = points_frame(row.study_id, row.series_id, row.view, points, "stage1" if given is None else "given")
        with timed("crop"):
            crops = stage2_crops(volume_series, points, row.view, self.pre_cfg, window)
        levels = []
        for preset in models.presets_for(row.view):
            rows = condition_rows(models.stage2[preset][0].cfg.condition)
            for fold, bank in fold_banks(models.stage2[preset]).items():
                with timed("classify"):
                    probs = predict_levels(crops, bank, self.infer_cfg.tta_angles)
                frame = level_frame([row.study_id], [row.series_id], probs[None], rows)
                levels.append(frame.assign(preset=preset, fold=fold))
        return keypoints, levels, (volume_series, points) if view_named(view).places_levels else None

    # --- the axial branch -----------------------------------------------------------------------------------
    def predict_axial(
        self,
        split: str,
        study_id: int,
        t2: Series,
        t2_points: np.ndarray,
        series_ids: list[int],
        models: ModelSet,
        timed: Timed = _untimed,
    ) -> list[pd.DataFrame]:
        """Every axial preset's probabilities (``level_frame`` rows + ``preset``, the assigned slice's ``level,
        instance_number, distance_mm`` and the localisers' points, ``AXIAL_POINT_COLUMNS``) of each level the
        study's Axial T2 series image: the Sagittal T2 keypoints ``t2_points`` (5, 2, 2) of series ``t2`` place the
        levels (within ``infer_cfg.axial_max_distance_mm``), each assigned level's stack is localised by the axial
        localisers (median) and cut with the training crop function, and every axial preset classifies the crops
        with the TTA. A series or a level that cannot be read is reported and skipped; a level no series images
        gives no rows."""
        points = sagittal_level_points(t2_points, t2.geometry)
        frames = []
        for series_id in series_ids:
            try:
                with timed("axial_read"):
                    series = read_axial_series(self.paths.series_dir(split, study_id, series_id), series_id)
            except SeriesError as error:
                self.faults.report(study_id, series_id, f"axial series not used: {error}")
                continue
            if series is None:
                self.faults.report(study_id, series_id, "axial series not used: none of its images is axial")
                continue
            for line in series.geometry.dropped:
                self.faults.report(study_id, series_id, f"axial slice left out: {line}")
            table = level_table(study_id, points, [series], self.infer_cfg.axial_max_distance_mm)
            for row in table[table["assigned"]].itertuples():
                try:
                    frames += self._predict_axial_level(series, table, row, models, timed)
                except SeriesError as error:  # an unreadable slice: that level falls back, the series' others stay
                    self.faults.report(study_id, series_id, f"{row.level} not predicted on the axial slices: {error}")
        return frames

    def _predict_axial_level(
        self, series: AxialSeries, table: pd.DataFrame, row: Any, models: ModelSet, timed: Timed
    ) -> list[pd.DataFrame]:
        """The axial presets' rows of one assigned level, ``row`` of the series' level ``table``; the localisers'
        points checked against the level's projected sagittal point (``axial_check``)."""
        series_id = series.series_id
        files = dict(zip(series.instance_numbers.tolist(), series.geometry.files, strict=True))
        with timed("axial_read"):
            instances = stack_instances(table, series_id, int(row.instance_number), self.pre_cfg)
            slices = [read_slice(files[i]) for i in instances]
        with timed("axial_crop"):
            window = intensity_window(slices, self.pre_cfg.percentiles)
            stack = level_stack(slices, self.pre_cfg.img_size, window)
        with timed("axial_models"):
            level_points = predict_keypoints(stack, models.stage1[LEVEL_VIEW])[0]
        k = int(np.flatnonzero(series.instance_numbers == int(row.instance_number))[0])
        level_points, recentred = check_points(
            level_points,
            np.array([row.point_x, row.point_y]),
            (int(row.rows), int(row.columns)),
            np.array([row.row_mm, row.column_mm]),
            series.geometry.orientations[k],
        )
        with timed("axial_crop"):
            spacing = slice_spacings(table, instances)
            crops = level_crops(slices, level_points, spacing, window, self.pre_cfg)
        where = dict(zip(AXIAL_POINT_COLUMNS, level_points.reshape(-1).tolist(), strict=True))
        where.update(level=row.level, instance_number=int(row.instance_number), distance_mm=row.distance_mm)
        where.update(recentred=recentred)
        level_index = LEVEL_NAMES.index(row.level)
        frames = []
        for preset in models.presets_for(LEVEL_VIEW):
            rows = condition_rows(models.stage2[preset][0].cfg.condition)
            for fold, bank in fold_banks(models.stage2[preset]).items():
                with timed("axial_models"):
                    probs = predict_levels(crops, bank, self.infer_cfg.tta_angles)
                frame = level_frame([row.study_id], [series_id], probs[None], rows, [level_index])
                frames.append(frame.assign(preset=preset, fold=fold, **where))
        return frames


def blend_folds(
    levels: pd.DataFrame, models: ModelSet | list[ModelSet], blend: Blend
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The sagittal, the axial and the blended prediction per row id of ``predict_table``'s level rows: each fold's
    models routed and blended on their own, as the blend was fit (on one fold's out-of-fold rows), then the folds
    averaged; the severe boost, when the blend keeps it, on the average."""
    routes = model_routes(models)
    folds = sorted(levels["fold"].unique()) if "fold" in levels and len(levels) else [None]
    parts = []
    for fold in folds:
        part = levels if fold is None else levels[levels["fold"] == fold]
        sagittal_levels, axial_levels = split_axial(part, models)
        sagittal, axial = route(sagittal_levels, routes), merge_axial(axial_levels, routes)
        parts.append((sagittal, axial, blend_rows(sagittal, axial, replace(blend, severe_boost=False))))
    sagittal, axial, blended = (mean_rows([p[k] for p in parts]) for k in range(3))
    return sagittal, axial, boost_max_severe(blended) if blend.severe_boost else blended


def mean_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per row id the mean of the frames' probabilities (and ``distance_mm`` where they have it), rows in the order
    they first appear, each summing to one."""
    joined = pd.concat(frames, ignore_index=True)
    columns = [c for c in (*SEVERITY_COLUMNS, "distance_mm") if c in joined]
    if joined.empty:
        return joined
    mean = joined.groupby("row_id", sort=False)[columns].mean().reset_index()
    probs = mean[list(SEVERITY_COLUMNS)].to_numpy(float)
    mean[list(SEVERITY_COLUMNS)] = probs / probs.sum(axis=1, keepdims=True)
    return mean


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
