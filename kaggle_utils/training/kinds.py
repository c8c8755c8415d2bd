"""The kinds of training run, in one table: a stage (1, the localiser; 2, the classifier) of a view localised per
series (sagittal: one sample a series, all five levels at once) or per level (axial: one sample an assigned level),
each with where its samples come from, its two datasets and its task. ``train`` asks the table instead of branching
on a view's name; adding a view is its ``views.VIEWS`` entry and its presets, and a new kind a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.labels import condition_rows, level_slug
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.views import view_named
from kaggle_utils.io.point_gaps import estimated_series
from kaggle_utils.io.tables import load_table
from kaggle_utils.training import denoise, stage1_error
from kaggle_utils.training.data import AxialCropDataset, CropDataset, KeypointDataset, LevelKeypointDataset
from kaggle_utils.training.tasks import ClassifierTask, KeypointTask

Datasets = tuple[Dataset, Dataset | None]


@dataclass(frozen=True)
class StageKind:
    """One kind of training run: ``samples(paths, cfg)`` its sample table (one row a sample, with its fold);
    ``datasets(paths, cfg, train, val, fold)`` the training set and the validation set (None for a final model)
    of those rows; ``task(cfg, device, paths)`` what the training loop asks of it."""

    samples: Callable[[Paths, TrainConfig], pd.DataFrame]
    datasets: Callable[[Paths, TrainConfig, pd.DataFrame, pd.DataFrame | None, int], Datasets]
    task: Callable[[TrainConfig, torch.device, Paths | None], KeypointTask | ClassifierTask]


# --- samples ----------------------------------------------------------------------------------------
def series_samples(paths: Paths, cfg: TrainConfig) -> pd.DataFrame:
    """Training series of the preset's view that have keypoints (for a localiser, none of them estimated:
    ``point_gaps``) and the cached arrays of the config's stage; a series 01 could not cache is left out and named."""
    series = load_table(paths, "series")
    keypoints = load_table(paths, "keypoints")
    series = series[(series["view"] == cfg.view) & series["series_id"].isin(keypoints["series_id"])]
    if cfg.stage == 1:  # a localiser learns only from labelled points
        series = series[~series["series_id"].isin(estimated_series(keypoints))]
    array = paths.stage1_array if cfg.stage == 1 else paths.stage2_array
    exists = np.array([array(r.study_id, r.series_id).exists() for r in series.itertuples()], dtype=bool)
    if not exists.all():  # 01 could not cache them (it named each and why)
        absent = ", ".join(str(s) for s in series.loc[~exists, "series_id"].head(10))
        print(f"{cfg.name}: {int((~exists).sum())} series without cached arrays are left out: {absent}")
    return series[exists].reset_index(drop=True)


def level_samples(paths: Paths, cfg: TrainConfig) -> pd.DataFrame:
    """The samples of a view localised per level (``axial_keypoints``) with their folds; for stage 2 those whose
    crops exist."""
    samples = load_table(paths, "axial_keypoints")
    folds = load_table(paths, "folds").set_index("study_id")["fold"]
    samples = samples.assign(fold=samples["study_id"].map(folds)).dropna(subset=["fold"])
    if cfg.stage == 2:
        rows = samples.itertuples()
        keys = [(int(r.study_id), int(r.series_id), level_slug(r.level), int(r.instance_number)) for r in rows]
        samples = samples[[paths.axial_crops(*key).exists() for key in keys]]
    return samples.astype({"fold": int}).reset_index(drop=True)


# --- datasets ----------------------------------------------------------------------------------------
def _keypoint_sets(
    paths: Paths, cfg: TrainConfig, train: pd.DataFrame, val: pd.DataFrame | None, fold: int
) -> Datasets:
    keypoints = load_table(paths, "keypoints")
    return (
        KeypointDataset(train, paths, cfg.n_frames, keypoints, train=True, flip=cfg.augment),
        None if val is None else KeypointDataset(val, paths, cfg.n_frames, keypoints),
    )


def _level_keypoint_sets(
    paths: Paths, cfg: TrainConfig, train: pd.DataFrame, val: pd.DataFrame | None, fold: int
) -> Datasets:
    keypoints = load_table(paths, "axial_keypoints")
    return (
        LevelKeypointDataset(train, paths, cfg.n_frames, keypoints, train=True, flip=cfg.augment),
        None if val is None else LevelKeypointDataset(val, paths, cfg.n_frames, keypoints),
    )


def _crop_sets(paths: Paths, cfg: TrainConfig, train: pd.DataFrame, val: pd.DataFrame | None, fold: int) -> Datasets:
    targets = load_table(paths, "targets")
    train_targets, pseudo = denoise.round2_inputs(cfg, targets[targets["study_id"].isin(train["study_id"])], fold)
    rows = condition_rows(cfg.condition)
    error_roots = stage1_error.make_error_crops(paths, cfg, cfg.stage1_error_draws) if cfg.stage1_error_p > 0 else ()
    training = CropDataset(
        train,
        paths,
        cfg.n_frames,
        rows,
        train_targets,
        train=True,
        flip=cfg.augment,
        pseudo=pseudo,
        swap_sides=view_named(cfg.view).flip_swaps_sides,
        error_roots=error_roots,
        error_p=cfg.stage1_error_p,
    )
    return training, None if val is None else CropDataset(val, paths, cfg.n_frames, rows, targets)  # given labels


def _axial_crop_sets(
    paths: Paths, cfg: TrainConfig, train: pd.DataFrame, val: pd.DataFrame | None, fold: int
) -> Datasets:
    targets = load_table(paths, "targets")
    train_targets, pseudo = denoise.round2_inputs(cfg, targets[targets["study_id"].isin(train["study_id"])], fold)
    return (
        AxialCropDataset(train, paths, cfg.n_frames, train_targets, train=True, flip=cfg.augment, pseudo=pseudo),
        None if val is None else AxialCropDataset(val, paths, cfg.n_frames, targets),
    )


# --- tasks -------------------------------------------------------------------------------------------
def _keypoint_task(cfg: TrainConfig, device: torch.device, paths: Paths | None = None) -> KeypointTask:
    return KeypointTask(cfg, device)


def _classifier_task(cfg: TrainConfig, device: torch.device, paths: Paths | None = None) -> ClassifierTask:
    """With ``paths``, the task scores validation against the training labels (the metric needs every study's)."""
    return ClassifierTask(cfg, device, targets=None if paths is None else load_table(paths, "targets"))


STAGE_KINDS: dict[tuple[int, str], StageKind] = {
    (1, "series"): StageKind(series_samples, _keypoint_sets, _keypoint_task),
    (1, "level"): StageKind(level_samples, _level_keypoint_sets, _keypoint_task),
    (2, "series"): StageKind(series_samples, _crop_sets, _classifier_task),
    (2, "level"): StageKind(level_samples, _axial_crop_sets, _classifier_task),
}
"""(stage, how the view is localised: ``View.localised_per``) -> its kind of training run."""


def stage_kind(cfg: TrainConfig) -> StageKind:
    """The kind of training run of a config."""
    return STAGE_KINDS[cfg.stage, view_named(cfg.view).localised_per]
