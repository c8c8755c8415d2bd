"""Training runs: one preset over the requested folds, from the hand-off tables to checkpoints and OOF files.

The notebooks call ``train_folds`` once per preset; it builds the datasets and loaders of each fold,
runs ``engine.fit`` and writes the fold's out-of-fold predictions (keypoints for stage 1, level
probabilities for stage 2) to ``WORK_DIR/oof``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from kaggle_utils import viz
from kaggle_utils.config import TrainConfig
from kaggle_utils.data import CropDataset, KeypointDataset, seed_worker
from kaggle_utils.engine import ClassifierTask, KeypointTask, default_device, fit
from kaggle_utils.models import condition_rows
from kaggle_utils.paths import Paths
from kaggle_utils.tables import load_table


@dataclass(frozen=True)
class FoldResult:
    preset: str
    fold: int
    metrics: dict
    seconds: float
    checkpoint: Path  # its curves PNG sits beside it (``*.curves.png``)


def plane_series(paths: Paths, cfg: TrainConfig) -> pd.DataFrame:
    """Training series of the preset's plane that have keypoints (their arrays exist for both stages)."""
    series = load_table(paths, "series")
    keypoints = load_table(paths, "keypoints")
    series = series[(series["plane"] == cfg.plane) & series["series_id"].isin(keypoints["series_id"])]
    if cfg.stage == 2:
        exists = [paths.stage2_array(r.study_id, r.series_id).exists() for r in series.itertuples()]
        series = series[exists]
    return series.reset_index(drop=True)


def datasets(paths: Paths, cfg: TrainConfig, series: pd.DataFrame, fold: int) -> tuple[Dataset, Dataset]:
    train, val = series[series["fold"] != fold], series[series["fold"] == fold]
    if train.empty or val.empty:
        raise ValueError(f"fold {fold} leaves {len(train)} training and {len(val)} validation series for {cfg.name}")
    if cfg.stage == 1:
        keypoints = load_table(paths, "keypoints")
        return (
            KeypointDataset(train, paths, cfg.n_frames, keypoints, train=True),
            KeypointDataset(val, paths, cfg.n_frames, keypoints),
        )
    targets = load_table(paths, "targets")
    rows = condition_rows(cfg.condition)
    return (
        CropDataset(train, paths, cfg.n_frames, rows, targets, train=True),
        CropDataset(val, paths, cfg.n_frames, rows, targets),
    )


def loader(dataset: Dataset, cfg: TrainConfig, train: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > cfg.batch_size,
        num_workers=cfg.num_workers,
        worker_init_fn=seed_worker,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def train_folds(
    paths: Paths, cfg: TrainConfig, folds: list[int], device: torch.device | None = None
) -> list[FoldResult]:
    """Train ``cfg`` on each fold; write ``models/{name}-f{fold}-s{seed}.pt`` (+ sidecar, curve log) and OOF."""
    device = device or default_device()
    series = plane_series(paths, cfg)
    results = []
    for fold in folds:
        train_set, val_set = datasets(paths, cfg, series, fold)
        task = (
            KeypointTask(cfg, device)
            if cfg.stage == 1
            else ClassifierTask(cfg, device, targets=load_table(paths, "targets"))
        )
        checkpoint = paths.checkpoint(cfg.name, fold, cfg.seed)
        _, sidecar, oof = fit(cfg, task, loader(train_set, cfg, True), loader(val_set, cfg, False), checkpoint, fold)
        paths.oof_dir.mkdir(parents=True, exist_ok=True)
        oof.assign(fold=fold).to_csv(paths.oof_dir / f"{checkpoint.stem}.csv", index=False)
        save_curves(checkpoint)
        results.append(FoldResult(cfg.name, fold, sidecar["metrics"]["val"], sidecar["train_seconds"], checkpoint))
    return results


def save_curves(checkpoint: Path) -> Path:
    """The training curves of a checkpoint's CSV log as a PNG beside it (``*.curves.png``)."""
    log = pd.read_csv(checkpoint.with_suffix(".log.csv"))
    figure = viz.curves_figure(log, title=checkpoint.stem)
    path = viz.save_figure(figure, checkpoint.with_suffix(".curves.png"))
    plt.close(figure)
    return path


def results_table(results: list[FoldResult]) -> pd.DataFrame:
    """One row per trained fold: preset, fold, seconds and the final validation metrics."""
    return pd.DataFrame([{"preset": r.preset, "fold": r.fold, "seconds": r.seconds, **r.metrics} for r in results])
