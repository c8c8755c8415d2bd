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
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
from kaggle_utils.frames import take_frames
from kaggle_utils.labels import condition_rows, level_frame, sort_level_points
from kaggle_utils.paths import Paths
from kaggle_utils.predictors import KeypointPredictor, LevelPredictor
from kaggle_utils.preprocess import intensity_window, stage1_volume, stage2_crops
from kaggle_utils.tables import points_frame
from kaggle_utils.views import view


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to predict: the network, the config its sidecar holds, and its stage's predictor."""

    model: nn.Module
    cfg: TrainConfig
    predictor: KeypointPredictor | LevelPredictor


@dataclass
class ModelSet:
    """Loaded models: stage-1 localisers by plane, stage-2 classifiers by preset name."""

    stage1: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))
    stage2: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))

    def presets_for(self, plane: str) -> list[str]:
        return [name for name, bank in self.stage2.items() if bank[0].cfg.plane == plane]


def load_models(paths: Paths, folds: list[int] | None = None, device: torch.device | None = None) -> ModelSet:
    """Every checkpoint in ``models/`` (of the given folds), rebuilt from its sidecar; final models (fold -1)
    count as a fold of their own, so the test-time ensemble (``folds=None``) takes them beside the fold models."""
    device = device or default_device()
    models = ModelSet()
    for path in paths.checkpoints():
        model, cfg, sidecar = load_checkpoint(path, device)
        if folds is not None and sidecar["fold"] not in folds:
            continue
        if cfg.stage == 1:
            models.stage1[cfg.plane].append(LoadedModel(model, cfg, KeypointPredictor(cfg, device)))
        else:
            models.stage2[cfg.name].append(LoadedModel(model, cfg, LevelPredictor(cfg, device)))
    if not models.stage1 or not models.stage2:
        raise FileNotFoundError(f"no stage-1 and stage-2 checkpoints for folds {folds} in {paths.models_dir}")
    return models


def model_sets(models: ModelSet | Sequence[ModelSet]) -> list[ModelSet]:
    """One model set, or one per device (``load_models_on``), as a list."""
    return [models] if isinstance(models, ModelSet) else list(models)


def load_models_on(paths: Paths, devices: Sequence[torch.device], folds: list[int] | None = None) -> list[ModelSet]:
    """The ensemble once per device, so studies can be split over the cards: each T4 of Kaggle's "T4 x2" holds all
    of it (24 checkpoints: 8.5 GB in fp32, of its 15 GB)."""
    return [load_models(paths, folds, device) for device in devices]


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


def split_by_study(series: pd.DataFrame, n_shards: int) -> list[pd.DataFrame]:
    """``series`` in ``n_shards`` parts of whole studies, dealt in turn in the table's order (balanced to one study)."""
    studies = list(dict.fromkeys(series["study_id"]))
    shard_of = {study: i % n_shards for i, study in enumerate(studies)}
    shard = series["study_id"].map(shard_of)
    return [series[shard == i] for i in range(n_shards)]


def predict_series_table(
    paths: Paths,
    series: pd.DataFrame,
    models: ModelSet | Sequence[ModelSet],
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    desc: str = "inference",
    timer: StageTimer | None = None,
    given_points: Mapping[int, np.ndarray] | None = None,
    axial_series: Mapping[int, list[int]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keypoints and per-preset level probabilities for every series of a table (``study_id, series_id, plane,
    split``). A series that cannot be read is reported and skipped; the submission falls back for it.
    ``timer`` (for the benchmark) adds up the stages read, volume, keypoints, crop and classify, and those of the
    axial branch (``predict_axial``).
    ``given_points`` (series id -> (5, 2, 2) relative, e.g. the ground truth for the CV's oracle) replace the
    localisers' keypoints of the series they cover; their rows say ``source=given``.
    With ``axial_series`` (study id -> its Axial T2 series ids, ``axial_series_ids``) and axial models, each study's
    first Sagittal T2 series places its levels on them (``predict_axial``): the axial presets' rows carry the
    assigned slice's ``distance_mm``.

    Given one model set per device (``load_models_on``), the studies are split over the devices, one thread each:
    a thread's GPU work, cv2 and numpy run without the GIL, so the cards and the CPU stages overlap, and the models
    stay in this process (no second copy in host memory, no pickling). The timer then sums over the devices."""
    sets = model_sets(models)
    if len(sets) == 1:
        return _predict_shard(paths, series, sets[0], pre_cfg, infer_cfg, desc, timer, given_points, axial_series)
    shards = split_by_study(series, len(sets))
    timers = [StageTimer() for _ in sets]
    with ThreadPoolExecutor(len(sets)) as pool:
        jobs = [
            pool.submit(
                _predict_shard, paths, shard, ms, pre_cfg, infer_cfg, f"{desc} [{i}]", t, given_points, axial_series, i
            )
            for i, (shard, ms, t) in enumerate(zip(shards, sets, timers, strict=True))
        ]
        parts = [job.result() for job in jobs]
    if timer is not None:
        for shard_timer in timers:
            timer.add(shard_timer)
    return _concat([p[0] for p in parts]), _concat([p[1] for p in parts])


def _predict_shard(
    paths: Paths,
    series: pd.DataFrame,
    models: ModelSet,
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    desc: str,
    timer: StageTimer | None,
    given_points: Mapping[int, np.ndarray] | None = None,
    axial_series: Mapping[int, list[int]] | None = None,
    position: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    timed = timer or _untimed
    keypoints, levels = [], []
    placed: set[int] = set()  # studies whose axial levels are placed (by their first Sagittal T2 series)
    axial_ready = axial_series is not None and "axial" in models.stage1 and models.presets_for("axial")
    for row in tqdm(list(series.itertuples()), desc=desc, position=position):
        if row.plane not in models.stage1:
            continue
        try:
            with timed("read"):
                volume_series = read_series(paths.series_dir(row.split, row.study_id, row.series_id))
        except SeriesError as error:
            warnings.warn(f"study {row.study_id} series {row.series_id} skipped: {error}", stacklevel=2)
            continue
        given = None if given_points is None else given_points.get(row.series_id)
        with timed("volume"):
            window = intensity_window(volume_series.slices, pre_cfg.percentiles)  # shared with the crops
            volume = stage1_volume(volume_series, pre_cfg, window) if given is None else None  # for the localisers
        with timed("keypoints"):
            points = predict_keypoints(volume, models.stage1[row.plane]) if given is None else given
        source = "stage1" if given is None else "given"
        keypoints.append(points_frame(row.study_id, row.series_id, row.plane, points, source))
        with timed("crop"):
            crops = stage2_crops(volume_series, points, row.plane, pre_cfg, window)
        for preset in models.presets_for(row.plane):
            bank = models.stage2[preset]
            with timed("classify"):
                probs = predict_levels(crops, bank, infer_cfg.tta_angles)
            rows = condition_rows(bank[0].cfg.condition)
            frame = level_frame([row.study_id], [row.series_id], probs[None], rows)
            levels.append(frame.assign(preset=preset))
        if axial_ready and row.plane == "t2" and row.study_id not in placed:
            placed.add(row.study_id)
            ids = axial_series.get(row.study_id, [])
            study = (paths, row.split, row.study_id, volume_series, points, ids)
            levels += predict_axial(*study, models, pre_cfg, infer_cfg, timed)
    return _concat(keypoints), _concat(levels)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- the axial branch ----------------------------------------------------------------------------
AXIAL_DISTANCE_SCALE_MM = 2.0
"""Several series (or blocks) imaging one level: their predictions are averaged with weights exp(-|d| / this), d the
distance from the level's point to the assigned slice's plane."""


def axial_series_ids(paths: Paths, split: str) -> dict[int, list[int]]:
    """Study id -> its Axial T2 series ids (a study without has no entry)."""
    table = axial_series_table(paths, split)
    return {int(study): [int(s) for s in ids] for study, ids in table.groupby("study_id")["series_id"]}


def predict_axial(
    paths: Paths,
    split: str,
    study_id: int,
    t2: Series,
    t2_points: np.ndarray,
    series_ids: list[int],
    models: ModelSet,
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    timed: Callable[[str], AbstractContextManager[None]] = _untimed,
) -> list[pd.DataFrame]:
    """Every axial preset's probabilities (``level_frame`` rows + ``preset``, the assigned slice's ``level,
    instance_number, distance_mm`` and the localisers' points, ``AXIAL_POINT_COLUMNS``) of each level the study's
    Axial T2 series image: the Sagittal T2 keypoints ``t2_points`` (5, 2, 2) of series ``t2`` place the levels
    (within ``infer_cfg.axial_max_distance_mm``), each assigned level's stack is localised by the axial localisers
    (median) and cut with the training crop function, and every axial preset classifies the crops with the TTA.
    A series or a level that cannot be read is reported and skipped; a level no series images gives no rows.
    ``timed`` (the benchmark's ``StageTimer``) adds up the stages axial_read and axial_crop (CPU) and axial_models
    (the networks)."""
    points = sagittal_level_points(t2_points, t2.geometry)
    frames = []
    for series_id in series_ids:
        try:
            with timed("axial_read"):
                series = read_axial_series(paths.series_dir(split, study_id, series_id), series_id)
        except SeriesError as error:
            warnings.warn(f"study {study_id} axial series {series_id} skipped: {error}", stacklevel=2)
            continue
        if series is None:
            continue
        table = level_table(study_id, points, [series], infer_cfg.axial_max_distance_mm)
        files = dict(zip(series.instance_numbers.tolist(), series.geometry.files, strict=True))
        for row in table[table["assigned"]].itertuples():
            try:
                frames += _predict_axial_level(series.series_id, files, table, row, models, pre_cfg, infer_cfg, timed)
            except SeriesError as error:  # an unreadable slice: that level falls back, the series' others stay
                warnings.warn(f"study {study_id} series {series_id} {row.level} skipped: {error}", stacklevel=2)
    return frames


def _predict_axial_level(
    series_id: int,
    files: dict[int, Path],
    table: pd.DataFrame,
    row: tuple,
    models: ModelSet,
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    timed: Callable[[str], AbstractContextManager[None]],
) -> list[pd.DataFrame]:
    """The axial presets' rows of one assigned level, ``row`` of the series' level ``table``, its slices read from
    ``files`` (instance number -> file; ``predict_axial``)."""
    with timed("axial_read"):
        slices = [read_slice(files[i]) for i in stack_instances(table, series_id, int(row.instance_number))]
    with timed("axial_crop"):
        window = intensity_window(slices, pre_cfg.percentiles)
        stack = level_stack(slices, pre_cfg.img_size, window)
    with timed("axial_models"):
        level_points = predict_keypoints(stack, models.stage1["axial"])[0]
    with timed("axial_crop"):
        spacing = np.array([row.row_mm, row.column_mm])
        crops = level_crops(slices, level_points, spacing, pre_cfg.img_size, window)
    where = dict(zip(AXIAL_POINT_COLUMNS, level_points.reshape(-1).tolist(), strict=True))
    where.update(level=row.level, instance_number=int(row.instance_number), distance_mm=row.distance_mm)
    level = LEVEL_NAMES.index(row.level)  # the level's index into LEVELS
    frames = []
    for preset in models.presets_for("axial"):
        bank = models.stage2[preset]
        with timed("axial_models"):
            probs = predict_levels(crops, bank, infer_cfg.tta_angles)
        rows = condition_rows(bank[0].cfg.condition)
        frame = level_frame([row.study_id], [series_id], probs[None], rows, [level])
        frames.append(frame.assign(preset=preset, **where))
    return frames


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
    """25 rows for every study: model predictions where they exist, priors elsewhere; rows sum to one.
    One warning line names the studies that fell back, and for how many rows."""
    template = pd.DataFrame(
        [(row_id(s, c), c, s) for s in study_ids for c in LABEL_COLUMNS], columns=["row_id", "column", "study_id"]
    )
    out = template.merge(merged, on="row_id", how="left")
    missing = out[SEVERITY_COLUMNS[0]].isna()
    out.loc[missing, list(SEVERITY_COLUMNS)] = priors.loc[out.loc[missing, "column"]].to_numpy()
    if missing.any():
        families = out.loc[missing, "column"].map(condition_family)
        per_study = families.groupby(out.loc[missing, "study_id"]).agg(lambda f: ", ".join(sorted(set(f))))
        detail = "; ".join(f"{s}: {f}" for s, f in per_study.items())
        warnings.warn(
            f"{len(per_study)} studies fell back to label priors for conditions no series or model covered "
            f"(spinal/subarticular need a Sagittal T2, foraminal either plane): {detail}",
            stacklevel=2,
        )
    values = out[list(SEVERITY_COLUMNS)].to_numpy(float).clip(1e-7, None)
    out[list(SEVERITY_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return out[["row_id", *SEVERITY_COLUMNS]].reset_index(drop=True)


def prior_submission(study_ids: list[int], priors: pd.DataFrame) -> pd.DataFrame:
    """The class-prior baseline: every row predicted by its column's label frequencies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    row id the axial branch predicted; empty without axial models or series) and the axial levels' assigned slices
    and predicted points (``axial_points``)."""

    submission: pd.DataFrame
    baseline: pd.DataFrame
    keypoints: pd.DataFrame
    sagittal: pd.DataFrame
    axial: pd.DataFrame
    axial_points: pd.DataFrame


def load_blend(paths: Paths) -> Blend:
    """The blend fit out of fold beside the models (``models/blend.json``, written by the CV of notebook 04); without
    it, sagittal and axial predictions count equally (``Blend()``), which a line says."""
    path = paths.blend_file
    if path.exists():
        return Blend.load(path)
    print(f"{path} not found (the CV of notebook 04 fits it): sagittal and axial predictions weigh the same")
    return Blend()


def predict_studies(
    paths: Paths,
    series: pd.DataFrame,
    study_ids: list[int],
    models: ModelSet | Sequence[ModelSet],
    priors: pd.DataFrame,
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    desc: str = "inference",
    given_points: Mapping[int, np.ndarray] | None = None,
    blend: Blend | None = None,
) -> Prediction:
    """Predict the sagittal ``series`` and the studies' axial series and complete a 25-row submission for every
    study in ``study_ids``: the sagittal and axial predictions of a row combined by ``blend`` (default: the models'
    ``load_blend``); with a model set per device (``load_models_on``), the studies are split over the devices;
    ``given_points`` replace the localisers' keypoints where they have a series (``predict_series_table``)."""
    split = str(series["split"].iloc[0]) if len(series) else "test"
    axial_series = axial_series_ids(paths, split)
    run = (paths, series, models, pre_cfg, infer_cfg, desc, None, given_points, axial_series)
    keypoints, levels = predict_series_table(*run)
    routes = model_routes(models)
    sagittal_levels, axial_levels = split_axial(levels, models)
    sagittal, axial = route(sagittal_levels, routes), merge_axial(axial_levels, routes)
    placed = axial_points(axial_levels)
    if model_sets(models)[0].presets_for("axial"):
        print(axial_coverage(placed, study_ids, axial_series))
    blend = blend or (load_blend(paths) if len(axial) else Blend())
    with warnings.catch_warnings():  # the blended submission says which studies fell back
        warnings.simplefilter("ignore")
        sagittal_only = complete_submission(sagittal, study_ids, priors)
    return Prediction(
        submission=complete_submission(blend_rows(sagittal, axial, blend), study_ids, priors),
        baseline=prior_submission(study_ids, priors),
        keypoints=keypoints,
        sagittal=sagittal_only,
        axial=axial,
        axial_points=placed,
    )


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
    """``predict_series_table``'s rows of the sagittal presets, and those of the axial presets."""
    if levels.empty:
        return levels, levels
    on_axial = levels["preset"].isin(model_sets(models)[0].presets_for("axial"))
    return levels[~on_axial], levels[on_axial]
