"""Prediction in the training's precision: fp32 on the CPU, autocast on a GPU within a stated tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.presets import preset
from kaggle_utils.dev.bench_train import CachedArrays
from kaggle_utils.training.engine import prepare_model
from kaggle_utils.training.tasks import ClassifierTask, KeypointTask


def _predictions(cfg: TrainConfig, device: torch.device, batch: dict) -> torch.Tensor:
    torch.manual_seed(0)
    model = prepare_model(cfg, device).eval()
    task = KeypointTask(cfg, device) if cfg.stage == 1 else ClassifierTask(cfg, device)
    return task.predict(model, batch).cpu()


@pytest.mark.parametrize("name", ["stage1_t1", "sp1"])
def test_prediction_on_the_cpu_stays_fp32(tmp_path: Path, name: str) -> None:
    cfg = preset(name, "smoke")
    batch = CachedArrays.write(tmp_path, n_studies=4, n_slices=17).first_batch(cfg, torch.device("cpu"))
    mixed, full = (
        _predictions(cfg, torch.device("cpu"), batch),
        _predictions(dataclasses.replace(cfg, amp=False), torch.device("cpu"), batch),
    )
    assert mixed.dtype == torch.float32 and torch.equal(mixed, full)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast prediction needs a GPU")
@pytest.mark.parametrize(("name", "tolerance"), [("stage1_t1", 1 / 256), ("sp1", 0.02)])
def test_prediction_under_autocast_agrees_with_fp32(tmp_path: Path, name: str, tolerance: float) -> None:
    """Within a pixel of the 256 grid for keypoints, 0.02 for probabilities (fp16 on a T4, bf16 from Ampere on)."""
    device = torch.device("cuda")
    cfg = dataclasses.replace(preset(name, "smoke"), batch_size=8)
    batch = CachedArrays.write(tmp_path, n_studies=8, n_slices=17).first_batch(cfg, device)
    mixed, full = _predictions(cfg, device, batch), _predictions(dataclasses.replace(cfg, amp=False), device, batch)
    torch.testing.assert_close(mixed, full, rtol=0, atol=tolerance)
