"""The ensemble: every checkpoint of a models folder (or of some folds) rebuilt from its sidecar, once per device,
listed per preset and fold with what is unfinished or missing; and its two predictions, a stage-1 volume's keypoints
(the median of the localisers) and a series' level probabilities (the mean of a preset's models over the rotation
TTA).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.devices import default_device
from kaggle_utils.core.labels import sort_level_points
from kaggle_utils.core.paths import RESUME_SUFFIX, Paths, checkpoint_parts
from kaggle_utils.core.presets import preset_routes
from kaggle_utils.core.views import view_named
from kaggle_utils.io.frames import take_frames
from kaggle_utils.models.checkpoints import load_checkpoint
from kaggle_utils.models.predictors import KeypointPredictor, LevelPredictor


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to predict: the network, the config its sidecar holds, its fold and its stage's predictor."""

    model: nn.Module
    cfg: TrainConfig
    predictor: KeypointPredictor | LevelPredictor
    fold: int = 0


@dataclass
class ModelSet:
    """Loaded models: stage-1 localisers by view, stage-2 classifiers by preset name."""

    stage1: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))
    stage2: dict[str, list[LoadedModel]] = field(default_factory=lambda: defaultdict(list))

    def presets_for(self, view: str) -> list[str]:
        return [name for name, bank in self.stage2.items() if bank[0].cfg.view == view]


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
            models.stage1[cfg.view].append(LoadedModel(model, cfg, KeypointPredictor(cfg, device), sidecar["fold"]))
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
    banks = {**{f"stage1 {view}": bank for view, bank in models.stage1.items()}, **models.stage2}
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
        if bank[0].cfg.view not in models.stage1:
            problems.append(f"{name} reads {bank[0].cfg.view} series, for which no localiser is loaded: not used")
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
    layout = view_named(models[0].cfg.view).keypoints
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
    return sort_level_points(points) if view_named(models[0].cfg.view).localised_per == "series" else points


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


def fold_banks(models: list[LoadedModel]) -> dict[int, list[LoadedModel]]:
    """A preset's models grouped by fold, folds in order: each fold's prediction is blended before they are averaged
    (the blend is fit on one fold's out-of-fold rows)."""
    banks: dict[int, list[LoadedModel]] = {}
    for loaded in sorted(models, key=lambda m: m.fold):
        banks.setdefault(loaded.fold, []).append(loaded)
    return banks


def model_routes(models: ModelSet | Sequence[ModelSet]) -> dict[str, dict[str, int]]:
    """The routing of a model set's stage-2 presets, from the configs their sidecars hold."""
    return preset_routes(bank[0].cfg for bank in model_sets(models)[0].stage2.values())
