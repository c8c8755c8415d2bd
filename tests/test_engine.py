"""The training loop's parts: the curve log, the step readout, a training step that never waits for the GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from kaggle_utils.core.devices import autocast_dtype
from kaggle_utils.core.presets import preset
from kaggle_utils.dev.bench_train import CachedArrays
from kaggle_utils.training.engine import CurveLog, StepReadout, make_optimizer, prepare_model, train_step
from kaggle_utils.training.tasks import ClassifierTask, KeypointTask


def test_curve_log_appends_rows_and_rewrites_when_a_column_appears_or_rows_are_replaced(tmp_path: Path) -> None:
    log = CurveLog(tmp_path / "curves.csv")
    log.write({"step": 1, "train_loss": 0.5})
    log.write({"step": 2, "train_loss": 0.4})
    log.write({"step": 2, "val_loss": 0.6})  # a new column
    log.write({"step": 3, "train_loss": 0.3})
    table = pd.read_csv(log.path)
    assert list(table.columns) == ["step", "train_loss", "val_loss"] and table["step"].tolist() == [1, 2, 2, 3]
    log.rows = log.rows[:2]  # a resumed run keeps what its saved state had logged
    log.write({"step": 3, "train_loss": 0.35})
    assert pd.read_csv(log.path)["train_loss"].tolist() == [0.5, 0.4, 0.35]


def test_step_readout_gives_the_loss_and_gradient_norm_as_floats() -> None:
    assert StepReadout(torch.tensor(1.5), torch.tensor(2.0, dtype=torch.float64)).read() == (1.5, 2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the asynchronous readout needs a GPU")
def test_step_readout_on_a_gpu_reads_its_own_step_while_later_work_is_queued() -> None:
    x = torch.randn(2048, 2048, device="cuda")
    readouts = []
    for step in range(5):
        x = (x @ x).clamp_(-1, 1)
        readouts.append(StepReadout(x.abs().sum() * 0 + step, x.new_tensor(10.0 * step)))
    assert [r.read() for r in readouts] == [(float(k), 10.0 * k) for k in range(5)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="waiting for the device is a GPU matter")
@pytest.mark.parametrize("name", ["stage1_t1", "sp1"])
def test_a_training_step_on_a_gpu_never_waits_for_it(tmp_path: Path, name: str) -> None:
    # Augmentation (every op drawn), forward, loss, backward, clipping and AdamW are queued without a read-back or
    # a copy from pageable memory, so the host queues the next step while the GPU still runs this one.
    device = torch.device("cuda")
    cfg = dataclasses.replace(preset(name, "smoke"), blur_p=1.0, distort_p=1.0, batch_size=16)
    batch = CachedArrays.write(tmp_path, n_studies=16, n_slices=17).first_batch(cfg, device)
    model = prepare_model(cfg, device).train()
    task = KeypointTask(cfg, device) if cfg.stage == 1 else ClassifierTask(cfg, device)
    optimizer = make_optimizer(model, cfg, device)
    dtype = autocast_dtype(device, cfg.amp, cfg.amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    for _ in range(2):  # first calls may set up libraries (cuDNN, cuBLAS), which can wait once
        train_step(model, task, batch, optimizer, scaler, dtype, cfg.grad_clip)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(model, task, batch, optimizer, scaler, dtype, cfg.grad_clip)
    finally:
        torch.cuda.set_sync_debug_mode("default")
