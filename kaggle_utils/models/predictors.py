"""Prediction of one stage from a loader-style batch, shared by validation in training and by inference.

A predictor takes a model and a batch (uint8 frames, their mask) to its outputs on the predictor's device, in the
precision the model was trained for (``devices.inference_precision``): stage 1 the ten relative keypoints, stage 2
the per-level probabilities averaged over the rotation TTA, all rotations in one forward pass. Nothing here
augments or trains, so inference imports no training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.devices import device_images, inference_precision
from kaggle_utils.models.resample import resize, rotate_resize


@dataclass(frozen=True)
class KeypointPredictor:
    """Stage 1: frames as channels, at the model's size -> (B, 10, 2) relative keypoints."""

    cfg: TrainConfig
    device: torch.device

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, 1, S, S) images and the frame mask, on the device."""
        image = device_images(batch["image"], self.device)  # (B, F, H, W)
        if image.shape[-1] != self.cfg.img_size:
            image = resize(image, self.cfg.img_size)  # the same resampling as the training augmentation
        return image.unsqueeze(2), batch["mask"].to(self.device)

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        image, mask = self.inputs(batch)
        with inference_precision(self.device, self.cfg):
            return model(image, mask).float()


@dataclass(frozen=True)
class LevelPredictor:
    """Stage 2: every level's frames, each rotation of the TTA -> (B, 5, R, 3) probabilities."""

    cfg: TrainConfig
    device: torch.device

    def inputs(self, batch: dict, angles: tuple[float, ...] = (0.0,)) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x len(angles), 5, F, 1, S, S) images, sample-major, and the frame mask repeated to match."""
        image = device_images(batch["image"], self.device)  # (B, 5, F, H, W)
        b, levels, frames, h, w = image.shape
        size = self.cfg.img_size
        flat = rotate_resize(image.reshape(b, levels * frames, h, w), angles, size)
        copies = flat.shape[0] // b
        image = flat.reshape(b * copies, levels, frames, 1, size, size)
        return image, batch["mask"].to(self.device).repeat_interleave(copies, dim=0)

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict, angles: tuple[float, ...] = (0.0,)) -> torch.Tensor:
        """Probabilities (B, 5, R, 3), averaged over the TTA rotations (all in one forward pass)."""
        image, mask = self.inputs(batch, angles)
        with inference_precision(self.device, self.cfg):
            logits = model(image, mask)["logits"]
        probs = logits.float().softmax(-1)
        return probs.reshape(-1, len(angles), *probs.shape[1:]).mean(1)
