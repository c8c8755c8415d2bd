"""The two stage tasks of the training loop. A task knows a stage: how to turn a loader batch into device tensors
(GPU augmentation included), its loss, and its validation metrics; prediction itself is the stage's predictor's
(``predictors``), shared with inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.constants import LEVEL_NAMES, STAGE1_GRID
from kaggle_utils.core.devices import device_images
from kaggle_utils.core.labels import condition_rows, level_frame
from kaggle_utils.core.metric import score_parts, solution_from_targets
from kaggle_utils.models.losses import heatmap_divergence, keypoint_l1, pseudo_label_loss, weighted_soft_cross_entropy
from kaggle_utils.models.predictors import KeypointPredictor, LevelPredictor
from kaggle_utils.models.resample import resize
from kaggle_utils.training.augment import Stage1Augment, Stage2Augment


class Task(Protocol):
    def loss(self, model: nn.Module, batch: dict, train: bool) -> tuple[torch.Tensor, dict]: ...

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]: ...


@dataclass
class KeypointTask:
    """Stage 1: frames as channels -> augmentation moves image and keypoints together -> 10 points."""

    cfg: TrainConfig
    device: torch.device
    augment: nn.Module = field(init=False)
    predictor: KeypointPredictor = field(init=False)

    def __post_init__(self) -> None:
        self.augment = Stage1Augment(self.cfg).to(self.device)
        self.predictor = KeypointPredictor(self.cfg, self.device)

    def inputs(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, F, 1, S, S) images, the frame mask and the (B, 10, 2) relative targets, augmented when training."""
        target = batch["target"].to(self.device)
        if not (train and self.cfg.augment):
            return *self.predictor.inputs(batch), target
        image = device_images(batch["image"], self.device)  # (B, F, H, W)
        image, points = self.augment(image, target * image.shape[-1])
        return image.unsqueeze(2), batch["mask"].to(self.device), (points / self.cfg.img_size).clamp(0, 1)

    def loss(self, model: nn.Module, batch: dict, train: bool) -> tuple[torch.Tensor, dict]:
        """L1 on the relative points; the heatmap head adds ``heatmap_weight`` x its heatmaps' divergence from
        Gaussians at the (augmented) targets. Points whose ``point_mask`` is False (not labelled) add nothing."""
        image, mask, target = self.inputs(batch, train)
        known = batch.get("point_mask")
        known = None if known is None else known.to(self.device)
        if self.cfg.model != "keypoint_heatmap":
            pred = model(image, mask)
            return keypoint_l1(pred.float(), target, known), {"pred": pred.detach().float(), "target": target}
        pred, logits = model(image, mask, return_heatmaps=True)
        divergence = heatmap_divergence(logits, target, self.cfg.heatmap_stride, self.cfg.heatmap_sigma, known)
        loss = keypoint_l1(pred.float(), target, known) + self.cfg.heatmap_weight * divergence
        return loss, {"pred": pred.detach().float(), "target": target}

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.predictor.predict(model, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]:
        """The ``keypoint_metrics`` of the loader's batches, and the predictions per series."""
        model.eval()
        preds, targets, known, series, levels = [], [], [], [], []
        for batch in loader:
            preds.append(self.predict(model, batch).cpu())
            targets.append(batch["target"].cpu())
            known.append(batch.get("point_mask", torch.ones(targets[-1].shape[:-1], dtype=torch.bool)).cpu())
            series += [int(s) for s in batch["series_id"]]
            levels += [int(lv) for lv in batch.get("level_index", [])]
        pred, target, labelled = torch.cat(preds), torch.cat(targets), torch.cat(known)
        return keypoint_metrics(pred[labelled], target[labelled]), keypoint_frame(series, pred, levels or None)


def keypoint_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """L1 loss; point distances on the 256 grid; and the solution's shares of single coordinates (x and y
    counted apart) within 1 % and 5 % of the image, comparable with its reported figures."""
    error = (pred - target).abs()
    distance = ((pred - target) * STAGE1_GRID).norm(dim=-1)
    return {
        "loss": float(error.mean()),
        "mean_px": float(distance.mean()),
        "within_5px": float((distance < 5).float().mean()),
        "within_1pct": float((error < 0.01).float().mean()),
        "within_5pct": float((error < 0.05).float().mean()),
    }


def keypoint_frame(series_ids: list[int], pred: torch.Tensor, levels: list[int] | None = None) -> pd.DataFrame:
    """(samples, points) predictions as rows ``series_id, point, relative_x, relative_y``; with ``levels`` (a view
    localised per level: one sample per series and level) a ``level`` column (a ``LEVEL_NAMES`` name) too."""
    n_points = pred.shape[1]
    values = pred.reshape(-1, 2).numpy()
    frame = pd.DataFrame(
        {
            "series_id": np.repeat(series_ids, n_points),
            "point": np.tile(np.arange(n_points), len(series_ids)),
            "relative_x": values[:, 0],
            "relative_y": values[:, 1],
        }
    )
    if levels is not None:
        frame.insert(1, "level", np.repeat(np.asarray(LEVEL_NAMES)[levels], n_points))
    return frame


@dataclass
class ClassifierTask:
    """Stage 2: all levels and frames as channels through one augmentation -> per-level severity logits."""

    cfg: TrainConfig
    device: torch.device
    targets: pd.DataFrame | None = None  # the targets table, for the validation score
    augment: nn.Module = field(init=False)
    predictor: LevelPredictor = field(init=False)

    def __post_init__(self) -> None:
        self.augment = Stage2Augment(self.cfg).to(self.device)
        self.predictor = LevelPredictor(self.cfg, self.device)
        self.rows = condition_rows(self.cfg.condition)

    def inputs(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 5, F, 1, S, S) images (an axial level: its 3 crops in place of the 5 levels), the frame mask and the
        targets; when training, every level (crop) and frame of a sample goes through one draw of the augmentation."""
        target = batch["target"].to(self.device)
        if not train:
            return *self.predictor.inputs(batch), target
        image = device_images(batch["image"], self.device)  # (B, 5, F, H, W)
        b, levels, frames, h, w = image.shape
        size = self.cfg.img_size
        flat = image.reshape(b, levels * frames, h, w)
        flat = self.augment(flat) if self.cfg.augment else resize(flat, size)
        return flat.reshape(b, levels, frames, 1, size, size), batch["mask"].to(self.device), target

    def loss(self, model: nn.Module, batch: dict, train: bool) -> tuple[torch.Tensor, dict]:
        image, mask, target = self.inputs(batch, train)
        if train and "pseudo" in batch:
            # Labels and pseudo labels side by side on the class axis, so cutmix and mixup move them together.
            both = torch.cat([target, batch["pseudo"].to(self.device)], dim=-1)
            mixed = model(image, mask, both)
            label, pseudo = mixed["target"].split(3, dim=-1)
            return pseudo_label_loss(mixed["logits"].float(), label, pseudo, self.cfg.pseudo_weight), {}
        out = model(image, mask, target if train else None)
        mixed = out["target"] if out.get("target") is not None else target
        return weighted_soft_cross_entropy(out["logits"].float(), mixed), {}

    def predict(self, model: nn.Module, batch: dict, angles: tuple[float, ...] = (0.0,)) -> torch.Tensor:
        return self.predictor.predict(model, batch, angles)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]:
        """Weighted cross-entropy and the competition score (families this model predicts) on the loader."""
        model.eval()
        losses, frames = [], []
        for batch in loader:
            probs = self.predict(model, batch)
            target = batch["target"].to(self.device)
            losses.append(float(weighted_soft_cross_entropy(probs.clamp_min(1e-7).log(), target)))
            levels = batch.get("level_index")  # a view classified per level: one level per sample
            frames.append(level_frame(batch["study_id"], batch["series_id"], probs.cpu().numpy(), self.rows, levels))
        preds = pd.concat(frames, ignore_index=True)
        metrics = {"loss": float(np.mean(losses))}
        if self.targets is not None:
            metrics.update(score_predictions(preds, self.targets))
        return metrics, preds


def score_predictions(preds: pd.DataFrame, targets: pd.DataFrame) -> dict[str, float]:
    """Score row predictions (averaged per row id over series) on the labelled rows they cover."""
    per_row = preds.groupby("row_id")[["normal_mild", "moderate", "severe"]].mean().reset_index()
    solution = solution_from_targets(targets[targets["study_id"].isin(preds["study_id"])])
    solution = solution[solution["row_id"].isin(per_row["row_id"])]
    if solution.empty:
        return {}
    return score_parts(solution, per_row, "row_id")
