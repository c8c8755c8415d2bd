"""Inference from raw DICOMs: keypoints -> crops -> classifiers with TTA -> routing -> a complete submission.

Per series: read the DICOMs once, build the stage-1 volume, predict the keypoints (median over the
plane's localisers), crop every level with the same function as training, and run every stage-2 model
of that plane with all TTA rotations in one forward pass. Predictions are then averaged per row id and
routed as the solution does: subarticular from ``su``; spinal the mean of ``sp1``, ``sp2``, ``su``;
foraminal from the T1 model when the study has a Sagittal T1, else from the T2 models (each preset's
``routes``). The axial branch: a study's Sagittal T2 keypoints place its levels on its Axial T2 slices, whose
stacks are localised, cropped and classified by the axial presets; its spinal and subarticular rows meet the
sagittal ones in the blend fit out of fold (``kaggle_utils.blend``). Every study gets its 25 rows: what no model
covers falls back to the class priors of the training labels. Cross-validation and the scores are in ``crossval``.

A run is an ``Inference``: its inputs, and each step from a study's files to its rows as a method. Studies are
predicted one at a time and apart: a fault in one study's files costs only that study, is reported when it is found
(``faults.FaultLog``) and is summed up at the end (``Prediction.summary``).
"""

from __future__ import annotations

import re
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from kaggle_utils.axial import (
    AXIAL_POINT_COLUMNS,
    axial_series_table,
    level_crops,
    level_stack,
    level_table,
    read_axial_series,
    sagittal_level_points,
    stack_instances,
)
from kaggle_utils.blend import Blend, blend_rows
from kaggle_utils.checkpoints import load_checkpoint
from kaggle_utils.config import ConfigError, InferConfig, PreprocessConfig, TrainConfig, preset_routes
from kaggle_utils.constants import (
    IGNORE_INDEX,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    SEVERITY_COLUMNS,
    condition_family,
    row_id,
)
from kaggle_utils.devices import default_device
from kaggle_utils.dicom import Series, SeriesError, read_series, read_slice
from kaggle_utils.faults import FAULT_COLUMNS, FaultLog
from kaggle_utils.frames import take_frames
from kaggle_utils.labels import condition_rows, level_frame, sort_level_points
from kaggle_utils.paths import RESUME_SUFFIX, Paths, checkpoint_parts
from kaggle_utils.predictors import KeypointPredictor, LevelPredictor
from kaggle_utils.preprocess import check_slice_count, intensity_window, stage1_volume, stage2_crops
from kaggle_utils.tables import points_frame
from kaggle_utils.views import view


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to predict: the network, the config its sidecar holds, its fold and its stage's predictor."""

    model: nn.Module
    cfg: TrainConfig
    predictor: KeypointPredictor | LevelPredictor
    fold: int = 0


@dataclass
class ModelSet:
    """Loaded models: stage-1 localisers by plane, stage-2 classifiers by preset name."""

    stage1: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))
    stage2: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))

    def presets_for(self, plane: str) -> list[str]:
        return [name for name, bank in self.stage2.items() if bank[0].cfg.plane == plane]


def load_models(
    paths: Paths, folds: list[int] | None = None, device: torch.device | None = None, report: bool = True
) -> ModelSet:
    """Every checkpoint in ``models/`` (of the given folds), rebuilt from its sidecar; final models (fold -1)
    count as a fold of their own, so the test-time ensemble (``folds=None``) takes them beside the fold models.
    A checkpoint that cannot be loaded is named and left out; with ``report`` the models used are listed per
    preset and fold, and unfinished or missing runs are named (``models_report``). No model at all stops the run."""
    device = device or default_device()
    models = ModelSet()
    for path in paths.checkpoints():
        try:
            model, cfg, sidecar = load_checkpoint(path, device)
        except Exception as error:  # a damaged file can raise anything its unpickler meets
            warnings.warn(f"{path} cannot be loaded and is left out of the ensemble: {error}", stacklevel=2)
            continue
        if folds is not None and sidecar["fold"] not in folds:
            continue
        if cfg.stage == 1:
            models.stage1[cfg.plane].append(LoadedModel(model, cfg, KeypointPredictor(cfg, device), sidecar["fold"]))
        else:
            models.stage2[cfg.name].append(LoadedModel(model, cfg, LevelPredictor(cfg, device), sidecar["fold"]))
    if not models.stage1 or not models.stage2:
        raise FileNotFoundError(
            f"no stage-1 and stage-2 checkpoints for folds {folds} in {paths.models_dir}: train them (notebooks 02 "
            "and 03), or attach the weights dataset (WEIGHTS_DIR points anywhere else)"
        )
    if report:
        print(models_report(paths, models, folds))
    return models


def models_report(paths: Paths, models: ModelSet, folds: list[int] | None = None) -> str:
    """The models an ensemble uses, per localiser view and stage-2 preset with their folds; a warning names every
    run of those folds that is unfinished (a resume state without its checkpoint), every preset that lacks a fold
    the others have, and every classifier whose view has no localiser (it cannot be used)."""
    banks = {**{f"stage1 {plane}": bank for plane, bank in models.stage1.items()}, **models.stage2}
    folds_of = {name: sorted({m.fold for m in bank}) for name, bank in banks.items()}
    problems = []
    for state in sorted(paths.models_dir.glob(f"*{RESUME_SUFFIX}")):
        parts = checkpoint_parts(state)
        if parts is not None and (folds is None or parts[1] in folds) and not paths.checkpoint(*parts).exists():
            problems.append(f"{state.name}: an unfinished run of {parts[0]} fold {parts[1]}, not used")
    every = sorted({fold for found in folds_of.values() for fold in found})
    for name, found in folds_of.items():
        missing = [f for f in every if f not in found]
        if missing:
            problems.append(f"{name} has no model for fold(s) {missing}, which others have")
    for name, bank in models.stage2.items():
        if bank[0].cfg.plane not in models.stage1:
            problems.append(f"{name} reads {bank[0].cfg.plane} series, for which no localiser is loaded: not used")
    for problem in problems:
        warnings.warn(f"{paths.models_dir}: {problem}", stacklevel=3)
    listed = "; ".join(f"{name} {folds_of[name]}" for name in banks)
    return f"models from {paths.models_dir} (preset [folds]): {listed}"


def model_sets(models: ModelSet | Sequence[ModelSet]) -> list[ModelSet]:
    """One model set, or one per device (``load_models_on``), as a list."""
    return [models] if isinstance(models, ModelSet) else list(models)


def load_models_on(paths: Paths, devices: Sequence[torch.device], folds: list[int] | None = None) -> list[ModelSet]:
    """The ensemble once per device, so studies can be split over the cards: each T4 of Kaggle's "T4 x2" holds all
    of it (24 checkpoints: 8.5 GB in fp32, of its 15 GB). The models are listed once."""
    return [load_models(paths, folds, device, report=i == 0) for i, device in enumerate(devices)]


@torch.no_grad()
def predict_keypoints(volume: np.ndarray, models: list[LoadedModel]) -> np.ndarray:
    """(5, 2, 2) relative keypoints of a stage-1 volume (the view's ``KeypointLayout``): the median over the
    localisers."""
    layout = view(models[0].cfg.plane).keypoints
    predictions = []
    for loaded in models:
        frames, mask = take_frames(volume, loaded.cfg.n_frames)
        batch = {
            "image": torch.from_numpy(frames)[None],
            "mask": torch.from_numpy(mask)[None],
            "target": torch.zeros(1, layout.count, 2),
        }
        predictions.append(loaded.predictor.predict(loaded.model, batch)[0].cpu().numpy())
    points = np.median(predictions, axis=0).reshape(layout.shape)
    # A sagittal level's points are ordered by x, as its training targets; an axial level's are left, then right.
    return sort_level_points(points) if view(models[0].cfg.plane).localised_per == "series" else points


@torch.no_grad()
def predict_levels(crops: np.ndarray, models: list[LoadedModel], angles: tuple[float, ...]) -> np.ndarray:
    """(5, R, 3) probabilities of a series' crops, averaged over TTA rotations and models."""
    predictions = []
    for loaded in models:
        frames, mask = take_frames(crops, loaded.cfg.n_frames)  # (5, F, H, W), as a loader gives it
        batch = {
            "image": torch.from_numpy(frames)[None],
            "mask": torch.from_numpy(mask)[None],
            "target": torch.zeros(1),
        }
        predictions.append(loaded.predictor.predict(loaded.model, batch, angles)[0].cpu().numpy())
    return np.mean(predictions, axis=0)


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


AXIAL_DISTANCE_SCALE_MM = 2.0
"""Several series (or blocks) imaging one level: their predictions are averaged with weights exp(-|d| / this), d the
distance from the level's point to the assigned slice's plane."""


def axial_series_ids(paths: Paths, split: str) -> dict[int, list[int]]:
    """Study id -> its Axial T2 series ids (a study without has no entry)."""
    table = axial_series_table(paths, split)
    return {int(study): [int(s) for s in ids] for study, ids in table.groupby("study_id")["series_id"]}


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
        self, series: pd.DataFrame, study_ids: list[int], priors: pd.DataFrame, blend: Blend | None = None, desc=""
    ) -> Prediction:
        """The sagittal ``series`` and the studies' axial series predicted, and a 25-row submission completed for
        every study in ``study_ids``: the sagittal and axial predictions of a row combined by ``blend`` (default:
        the models' ``load_blend``), the rows no model predicted from ``priors``."""
        split = str(series["split"].iloc[0]) if len(series) else "test"
        axial_series = axial_series_ids(self.paths, split)
        keypoints, levels = self.predict_table(series, axial_series, desc or "inference")
        routes = model_routes(self.models)
        sagittal_levels, axial_levels = split_axial(levels, self.models)
        sagittal, axial = route(sagittal_levels, routes), merge_axial(axial_levels, routes)
        placed = axial_points(axial_levels)
        if self.sets[0].presets_for("axial"):
            print(axial_coverage(placed, study_ids, axial_series))
        blend = blend or (load_blend(self.paths) if len(axial) else Blend())
        blended = blend_rows(sagittal, axial, blend)
        return Prediction(
            submission=complete_submission(blended, study_ids, priors),
            baseline=prior_submission(study_ids, priors),
            keypoints=keypoints,
            sagittal=complete_submission(sagittal, study_ids, priors),
            axial=axial,
            axial_points=placed,
            from_priors=rows_without_prediction(blended, study_ids),
            faults=self.faults.frame(),
            series=series[[c for c in ("study_id", "series_id", "plane") if c in series]],
        )

    def predict_table(
        self, series: pd.DataFrame, axial_series: Mapping[int, list[int]] | None = None, desc: str = "inference"
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Keypoints and per-preset level probabilities of every series of a table (``study_id, series_id, plane,
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
        axial_ready = axial_ids is not None and "axial" in models.stage1 and models.presets_for("axial")
        for row in series.itertuples():
            if row.plane not in models.stage1:
                continue
            try:
                keypoints, levels, t2 = self._predict_sagittal(row, models, timed)
            except SeriesError as error:
                self.faults.report(study_id, row.series_id, f"not used: {error}")
                continue
            except Exception as error:  # whatever a broken input makes the code raise costs only this series
                self.faults.report(study_id, row.series_id, f"not used after {type(error).__name__}: {error}")
                continue
            found.keypoints.append(keypoints)
            found.levels += levels
            if axial_ready and row.plane == "t2":
                axial_ready = False  # the study's first Sagittal T2 series places its levels
                try:
                    found.levels += self.predict_axial(row.split, study_id, *t2, axial_ids, models, timed)
                except Exception as error:
                    self.faults.report(study_id, None, f"axial branch not used after {type(error).__name__}: {error}")
        return found

    def _predict_sagittal(
        self, row: Any, models: ModelSet, timed: Timed
    ) -> tuple[pd.DataFrame, list[pd.DataFrame], tuple[Series, np.ndarray]]:
        """One sagittal series: its keypoint rows, each preset's level rows, and the series with its keypoints."""
        with timed("read"):
            volume_series = read_series(self.paths.series_dir(row.split, row.study_id, row.series_id))
        for line in volume_series.dropped:
            self.faults.report(row.study_id, row.series_id, f"slice left out: {line}")
        check_slice_count(volume_series, row.plane)
        given = None if self.given_points is None else self.given_points.get(row.series_id)
        with timed("volume"):
            window = intensity_window(volume_series.slices, self.pre_cfg.percentiles)  # shared with the crops
            volume = stage1_volume(volume_series, self.pre_cfg, window) if given is None else None
        with timed("keypoints"):
            points = predict_keypoints(volume, models.stage1[row.plane]) if given is None else given
        keypoints = points_frame(row.study_id, row.series_id, row.plane, points, "stage1" if given is None else "given")
        with timed("crop"):
            crops = stage2_crops(volume_series, points, row.plane, self.pre_cfg, window)
        levels = []
        for preset in models.presets_for(row.plane):
            bank = models.stage2[preset]
            with timed("classify"):
                probs = predict_levels(crops, bank, self.infer_cfg.tta_angles)
            frame = level_frame([row.study_id], [row.series_id], probs[None], condition_rows(bank[0].cfg.condition))
            levels.append(frame.assign(preset=preset))
        return keypoints, levels, (volume_series, points)

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
                continue
            for line in series.geometry.dropped:
                self.faults.report(study_id, series_id, f"axial slice left out: {line}")
            table = level_table(study_id, points, [series], self.infer_cfg.axial_max_distance_mm)
            files = dict(zip(series.instance_numbers.tolist(), series.geometry.files, strict=True))
            for row in table[table["assigned"]].itertuples():
                try:
                    frames += self._predict_axial_level(series.series_id, files, table, row, models, timed)
                except SeriesError as error:  # an unreadable slice: that level falls back, the series' others stay
                    self.faults.report(study_id, series_id, f"{row.level} not predicted on the axial slices: {error}")
        return frames

    def _predict_axial_level(
        self, series_id: int, files: dict[int, Path], table: pd.DataFrame, row: Any, models: ModelSet, timed: Timed
    ) -> list[pd.DataFrame]:
        """The axial presets' rows of one assigned level, ``row`` of the series' level ``table``, its slices read
        from ``files`` (instance number -> file)."""
        with timed("axial_read"):
            slices = [read_slice(files[i]) for i in stack_instances(table, series_id, int(row.instance_number))]
        with timed("axial_crop"):
            window = intensity_window(slices, self.pre_cfg.percentiles)
            stack = level_stack(slices, self.pre_cfg.img_size, window)
        with timed("axial_models"):
            level_points = predict_keypoints(stack, models.stage1["axial"])[0]
        with timed("axial_crop"):
            spacing = np.array([row.row_mm, row.column_mm])
            crops = level_crops(slices, level_points, spacing, self.pre_cfg.img_size, window)
        where = dict(zip(AXIAL_POINT_COLUMNS, level_points.reshape(-1).tolist(), strict=True))
        where.update(level=row.level, instance_number=int(row.instance_number), distance_mm=row.distance_mm)
        level = LEVEL_NAMES.index(row.level)  # the level's index into LEVELS
        frames = []
        for preset in models.presets_for("axial"):
            bank = models.stage2[preset]
            with timed("axial_models"):
                probs = predict_levels(crops, bank, self.infer_cfg.tta_angles)
            rows = condition_rows(bank[0].cfg.condition)
            frame = level_frame([row.study_id], [series_id], probs[None], rows, [level])
            frames.append(frame.assign(preset=preset, **where))
        return frames


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def merge_axial(levels: pd.DataFrame, routes: dict[str, dict[str, int]]) -> pd.DataFrame:
    """One axial prediction per row id: each preset's mean over the series (and blocks) imaging the row's level,
    weighted by distance (``AXIAL_DISTANCE_SCALE_MM``), then the presets routed as ``route`` does."""
    if levels.empty:
        return pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS])
    weight = np.exp(-levels["distance_mm"].abs().to_numpy(float) / AXIAL_DISTANCE_SCALE_MM)
    weighted = levels[list(SEVERITY_COLUMNS)].mul(weight, axis=0).assign(weight=weight)
    sums = weighted.groupby([levels["row_id"], levels["preset"]]).sum()
    per_preset = sums[list(SEVERITY_COLUMNS)].div(sums["weight"], axis=0).reset_index()
    return route(per_preset, routes)


# --- merging -------------------------------------------------------------------------------------
def route(levels: pd.DataFrame, routes: dict[str, dict[str, int]]) -> pd.DataFrame:
    """One prediction per row id: average over series and models per preset, then over the presets of the first
    rank that predicted the row, as each preset's ``routes`` (``config.preset_routes``) rank it for the row's
    condition family. A preset in ``levels`` that ``routes`` does not know is an error that names it."""
    if levels.empty:
        return pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS])
    unknown = sorted(set(levels["preset"]) - set(routes))
    if unknown:
        raise ConfigError(f"predictions of presets {', '.join(unknown)}, which the routing does not know")
    per_preset = levels.groupby(["row_id", "preset"])[list(SEVERITY_COLUMNS)].mean().reset_index()
    per_preset["family"] = per_preset["row_id"].map(condition_family)
    ranks = [routes[p].get(f, np.nan) for p, f in zip(per_preset["preset"], per_preset["family"], strict=True)]
    per_preset["rank"] = np.asarray(ranks, dtype=float)  # NaN: the preset does not route that family
    routed = per_preset.dropna(subset=["rank"])
    first = routed.groupby("row_id")["rank"].transform("min")
    merged = routed[routed["rank"] == first].groupby("row_id")[list(SEVERITY_COLUMNS)].mean()
    return merged.reset_index()


def model_routes(models: ModelSet | Sequence[ModelSet]) -> dict[str, dict[str, int]]:
    """The routing of a model set's stage-2 presets, from the configs their sidecars hold."""
    return preset_routes(bank[0].cfg for bank in model_sets(models)[0].stage2.values())


def label_priors(targets: pd.DataFrame) -> pd.DataFrame:
    """Class frequencies of each label column (add-one smoothed): the fallback prediction and the baseline."""
    rows = []
    for column in LABEL_COLUMNS:
        labels = targets[column].to_numpy()
        counts = np.bincount(labels[labels != IGNORE_INDEX].astype(int), minlength=3) + 1.0
        rows.append((column, *(counts / counts.sum())))
    return pd.DataFrame(rows, columns=["column", *SEVERITY_COLUMNS]).set_index("column")


def complete_submission(merged: pd.DataFrame, study_ids: list[int], priors: pd.DataFrame) -> pd.DataFrame:
    """25 rows for every study: model predictions where they exist, priors elsewhere; rows sum to one. A prediction
    that is not a distribution (a value that is not finite, or all zero) is replaced by the priors, with a warning
    naming its rows: a submission with one such value would fail to score."""
    template = pd.DataFrame(
        [(row_id(s, c), c, s) for s in study_ids for c in LABEL_COLUMNS], columns=["row_id", "column", "study_id"]
    )
    out = template.merge(merged, on="row_id", how="left")
    values = out[list(SEVERITY_COLUMNS)].to_numpy(float)
    found = ~np.isnan(values).all(axis=1)
    broken = found & ~_distributions(values)
    if broken.any():
        named = ", ".join(out.loc[broken, "row_id"].head(10))
        warnings.warn(
            f"{int(broken.sum())} predicted rows are not distributions: the priors replace them: {named}", stacklevel=2
        )
    missing = ~found | broken
    out.loc[missing, list(SEVERITY_COLUMNS)] = priors.loc[out.loc[missing, "column"]].to_numpy()
    values = out[list(SEVERITY_COLUMNS)].to_numpy(float).clip(1e-7, None)
    out[list(SEVERITY_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return out[["row_id", *SEVERITY_COLUMNS]].reset_index(drop=True)


def _distributions(values: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of (N, 3) probabilities that are finite, not negative and not all zero."""
    return np.isfinite(values).all(axis=1) & (values >= 0).all(axis=1) & (values.sum(axis=1) > 0)


def rows_without_prediction(merged: pd.DataFrame, study_ids: list[int]) -> pd.DataFrame:
    """``study_id, row_id`` of every row of the studies that no model predicted, or not as a distribution
    (``complete_submission`` gives them the priors)."""
    valid = _distributions(merged[list(SEVERITY_COLUMNS)].to_numpy(float)) if len(merged) else []
    predicted = set(merged["row_id"][valid]) if len(merged) else set()
    rows = [(s, row_id(s, c)) for s in study_ids for c in LABEL_COLUMNS if row_id(s, c) not in predicted]
    return pd.DataFrame(rows, columns=["study_id", "row_id"]).astype({"study_id": "int64"})


def prior_submission(study_ids: list[int], priors: pd.DataFrame) -> pd.DataFrame:
    """The class-prior baseline: every row predicted by its column's label frequencies."""
    return complete_submission(pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS]), study_ids, priors)


def write_submission(submission: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(path, index=False)
    return path


# --- whole runs ----------------------------------------------------------------------------------
@dataclass
class Prediction:
    """What a run over studies produced: the complete submission (sagittal and axial blended), the class-prior
    baseline, the keypoints, the complete sagittal-only submission of the same models, the axial rows (one per
    row id the axial branch predicted; empty without axial models or series), the axial levels' assigned slices
    and predicted points (``axial_points``), the rows the priors filled (``from_priors``), what the inputs cost
    (``faults``, ``faults.FAULT_COLUMNS``) and the sagittal series it was given (``study_id, series_id, plane``)."""

    submission: pd.DataFrame
    baseline: pd.DataFrame
    keypoints: pd.DataFrame
    sagittal: pd.DataFrame
    axial: pd.DataFrame
    axial_points: pd.DataFrame
    from_priors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["study_id", "row_id"]))
    faults: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(FAULT_COLUMNS)))
    series: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["study_id", "series_id", "plane"]))

    def summary(self, shown: int = 10) -> str:
        """Which studies were predicted fully, partly (which rows came from the priors, and why) and not at all,
        and the faults of the studies predicted fully (``study_summary`` per study, ``shown`` of each kind)."""
        studies = sorted(int(s) for s in self.submission["row_id"].str.split("_").str[0].astype("int64").unique())
        missing = self.from_priors.groupby("study_id")["row_id"].apply(list).to_dict()
        partly = [s for s in studies if 0 < len(missing.get(s, [])) < len(LABEL_COLUMNS)]
        none = [s for s in studies if len(missing.get(s, [])) == len(LABEL_COLUMNS)]
        faulty = sorted(set(self.faults["study_id"]) - set(partly) - set(none))
        lines = [
            f"{len(studies)} studies: {len(studies) - len(partly) - len(none)} predicted fully, {len(partly)} partly, "
            f"{len(none)} not at all (class priors); {len(self.faults)} faults in the inputs"
        ]
        for label, group in (("partly", partly), ("not at all", none), ("fully, with faults", faulty)):
            lines += [f"  {label}: {self.study_summary(s, missing.get(s, []))}" for s in group[:shown]]
            if len(group) > shown:
                lines.append(f"  {label}: and {len(group) - shown} more studies")
        return "\n".join(lines)

    def study_summary(self, study_id: int, prior_rows: list[str]) -> str:
        """One study: how many rows of which families came from the priors, and its faults (or why no series
        could predict them)."""
        families = pd.Series([condition_family(r) for r in prior_rows], dtype=str).value_counts()
        rows = ", ".join(f"{family} {count}" for family, count in sorted(families.items()))
        faults = self.faults[self.faults["study_id"] == study_id]
        why = "; ".join(
            (f"series {f.series_id}: " if f.series_id >= 0 else "") + _short(f.message) for f in faults.itertuples()
        )
        if not why:
            planes = sorted(set(self.series.loc[self.series["study_id"] == study_id, "plane"]))
            why = f"the series listed for it: {', '.join(view(p).description for p in planes) or 'none'}"
        head = f"study {study_id}" + (f": rows from the priors: {rows}" if rows else "")
        return f"{head}; {why}"


def _short(message: str) -> str:
    """A fault's message with its file's folders left out (the summary names the study and the series)."""
    without_folders = re.sub(r"\S*/(?=[^/\s]+\.dcm\b)", "", message)  # a file: its name
    return re.sub(r"\S*/\d+/\d+: ", "", without_folders)  # a series folder: named by the summary already


def load_blend(paths: Paths) -> Blend:
    """The blend fit out of fold beside the models (``models/blend.json``, written by the CV of notebook 04); without
    it, sagittal and axial predictions count equally (``Blend()``), which a warning says."""
    path = paths.blend_file
    if path.exists():
        return Blend.load(path)
    warnings.warn(
        f"{path} not found (the CV of notebook 04 fits it): sagittal and axial predictions weigh the same", stacklevel=2
    )
    return Blend()


def axial_coverage(placed: pd.DataFrame, study_ids: list[int], axial_series: Mapping[int, list[int]]) -> str:
    """One line: how many of the studies' levels the axial branch predicted, and how many studies have no Axial T2
    series (their rows, and those of the levels no slice reached, are the sagittal prediction)."""
    levels = placed[placed["study_id"].isin(study_ids)].drop_duplicates(["study_id", "level"])
    without = sum(1 for s in study_ids if not axial_series.get(s))
    return (
        f"axial branch: {len(levels)} of {len(LEVEL_NAMES) * len(study_ids)} levels of {len(study_ids)} studies on an "
        f"axial slice, {without} of the studies without an Axial T2 series (the sagittal prediction stands elsewhere)"
    )


def axial_points(axial_levels: pd.DataFrame) -> pd.DataFrame:
    """One row per axial level a series imaged: ``study_id, series_id, level, instance_number, distance_mm`` and the
    localisers' points (``AXIAL_POINT_COLUMNS``)."""
    columns = ["study_id", "series_id", "level", "instance_number", "distance_mm", *AXIAL_POINT_COLUMNS]
    if axial_levels.empty:
        return pd.DataFrame(columns=columns)
    return axial_levels[columns].drop_duplicates(["series_id", "level", "instance_number"]).reset_index(drop=True)


def split_axial(levels: pd.DataFrame, models: ModelSet | Sequence[ModelSet]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``Inference.predict_table``'s rows of the sagittal presets, and those of the axial presets."""
    if levels.empty:
        return levels, levels
    on_axial = levels["preset"].isin(model_sets(models)[0].presets_for("axial"))
    return levels[~on_axial], levels[on_axial]
