"""The one training loop, the same for both stages (the stage itself is a task of ``tasks``).

``fit`` runs AdamW with a cosine schedule stepped per batch, autocast (fp16 with the grad scaler, or bf16 where the
card computes it natively; off on the CPU), channels_last, gradient clipping and gradient-norm logging, the
evaluation cadence, a CSV log of the curves (``CurveLog``), a resume state after every epoch, and at the end the
checkpoint with its JSON sidecar (``checkpoints``).
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from kaggle_utils.core import distributed
from kaggle_utils.core.config import TrainConfig, to_dict
from kaggle_utils.core.devices import autocast_dtype, mixed_precision, place_model, seed_everything
from kaggle_utils.core.paths import resume_state
from kaggle_utils.models.checkpoints import load_initial_weights, run_fields, same_run, save_checkpoint
from kaggle_utils.models.networks import build_model
from kaggle_utils.training.loader import DeviceBatches
from kaggle_utils.training.tasks import ClassifierTask, KeypointTask

# --- environment ---------------------------------------------------------------------------------


# --- tasks ---------------------------------------------------------------------------------------


# --- the loop ------------------------------------------------------------------------------------
def train_step(
    model: nn.Module,
    task: KeypointTask | ClassifierTask,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
    grad_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (augmentation included): returns the loss and the gradient norm before clipping."""
    with mixed_precision(task.device, dtype):
        loss, _ = task.loss(model, batch, train=True)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), grad_norm.detach()


def prepare_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The config's model on ``device``: the same initial weights in every process, channels_last on a GPU.
    With ``cfg.init_checkpoint`` the weights are a finished checkpoint's (no pretrained backbone is loaded)."""
    seed_everything(cfg.seed)
    if not cfg.init_checkpoint:
        return place_model(build_model(cfg), cfg, device)
    model = build_model(dataclasses.replace(cfg, pretrained=False, weights_file=""))
    return place_model(load_initial_weights(model, cfg), cfg, device)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over all parameters, as the solution. On a GPU the fused kernel: fewer launches per step, and a grad
    scaler (fp16) hands it the overflow flag on the device instead of reading it back every step."""
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
    )


@dataclass
class Trainer:
    """What a run carries from step to step, and what its resume state saves."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    log: CurveLog
    epoch: int = 0  # epochs finished
    step: int = 0
    seconds: float = 0.0  # training time of earlier sessions of this run

    def state_dict(self, cfg: TrainConfig) -> dict:
        return {
            "config": run_fields(to_dict(cfg)),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "log": self.log.rows,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.log.rows = list(state["log"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(trainer: Trainer, cfg: TrainConfig, path: Path, ctx: distributed.Context) -> None:
    """Continue from ``path`` when it holds this run's state; a state of another config is discarded."""
    if not (cfg.resume and path.exists()):
        return
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: optimizer and RNG states
    if not same_run(state["config"], cfg):
        if ctx.is_main:
            print(f"{path.name}: saved for another configuration; starting {cfg.name} afresh")
            path.unlink(missing_ok=True)
        return
    trainer.load_state_dict(state)
    if ctx.is_main:
        set_rng_state(state["rng"])  # a resumed single-process run draws exactly what the uninterrupted one did
    else:
        seed_everything(cfg.seed + 1000 * trainer.epoch + ctx.rank)
    if ctx.is_main:
        print(f"{path.name}: resuming {cfg.name} after epoch {trainer.epoch} (step {trainer.step})")


def _save_state(trainer: Trainer, cfg: TrainConfig, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(trainer.state_dict(cfg), tmp)
    tmp.replace(path)


def fit(
    cfg: TrainConfig,
    task: KeypointTask | ClassifierTask,
    train_loader: Any,
    val_loader: Any | None,
    checkpoint: Path,
    fold: int,
    extra: dict | None = None,
) -> tuple[nn.Module, dict, pd.DataFrame]:
    """Train ``cfg``'s model; save the last weights (as the solution does) with a JSON sidecar and a CSV log.

    After every epoch the full training state is saved beside the checkpoint, so an interrupted run
    continues from its last finished epoch (``cfg.resume``); the state file goes once the checkpoint is
    written. Under ``torchrun`` the model is wrapped in DistributedDataParallel, every process trains on its
    share of each batch, and rank 0 alone evaluates and writes files (the others return an empty sidecar).
    Returns the model, the sidecar dict and the final validation predictions (the fold's OOF). Without a
    ``val_loader`` (a final model on every study) nothing is evaluated: empty metrics and predictions.
    """
    run = _Run.start(cfg, task, train_loader, val_loader, checkpoint, fold)
    for epoch in range(run.trainer.epoch, run.epochs):
        run.train_epoch(train_loader, epoch)
        run.end_epoch()
    if not run.ctx.is_main:
        return run.model, {}, pd.DataFrame()
    return run.finish(extra)


@dataclass
class _Run:
    """One call of ``fit``: the model (and its DDP wrapper), the trainer state and the batches its epochs share."""

    cfg: TrainConfig
    task: KeypointTask | ClassifierTask
    ctx: distributed.Context
    model: nn.Module
    trained: nn.Module  # what the steps call: the model, or its DDP wrapper
    trainer: Trainer
    batches: DeviceBatches
    val_batches: Any | None
    dtype: torch.dtype | None
    checkpoint: Path
    fold: int
    started: float = field(default_factory=time.time)

    @property
    def epochs(self) -> int:
        return 1 if self.cfg.fast_dev_run else self.cfg.epochs

    @property
    def steps(self) -> int:
        return self.epochs * len(self.batches)

    @classmethod
    def start(cls, cfg: TrainConfig, task: Any, train_loader: Any, val_loader: Any, checkpoint: Path, fold: int):
        """The model, optimizer, schedule and scaler of a run, continued from its resume state when it has one."""
        ctx, device = distributed.context(), task.device
        model = prepare_model(cfg, device)
        seed_everything(cfg.seed + ctx.rank)  # same weights everywhere, but each process its own augmentation
        trained = model
        if ctx.world_size > 1:
            device_ids = [ctx.local_rank] if device.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # input shapes are fixed within a run
        batches = DeviceBatches(_limit(train_loader, cfg), device)
        steps = (1 if cfg.fast_dev_run else cfg.epochs) * len(batches)
        optimizer = make_optimizer(model, cfg, device)
        dtype = autocast_dtype(device, cfg.amp, cfg.amp_dtype)
        trainer = Trainer(
            model,
            optimizer,
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=cfg.lr_min),
            torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
            CurveLog(checkpoint.with_suffix(".log.csv")),
        )
        _restore(trainer, cfg, resume_state(checkpoint), ctx)
        if cfg.overfit_batch:
            val_batches = batches
        elif val_loader is None:  # a final model on every study: nothing held out
            val_batches = None
        else:
            val_batches = DeviceBatches(_limit(val_loader, cfg), device)
        return cls(cfg, task, ctx, model, trained, trainer, batches, val_batches, dtype, checkpoint, fold)

    def train_epoch(self, train_loader: Any, epoch: int) -> None:
        cfg, trainer = self.cfg, self.trainer
        set_epoch(train_loader, epoch)
        self.model.train()
        desc = f"{cfg.name} f{self.fold} epoch {epoch + 1}/{self.epochs}"
        progress = tqdm(self.batches, desc=desc, leave=False, disable=not self.ctx.is_main)
        pending = None  # the previous step's row: read once this step is queued, so the device never idles
        for batch in progress:
            loss, grad_norm = train_step(
                self.trained, self.task, batch, trainer.optimizer, trainer.scaler, self.dtype, cfg.grad_clip
            )
            trainer.scheduler.step()
            trainer.step += 1
            row = {"epoch": epoch + 1, "step": trainer.step, "lr": trainer.scheduler.get_last_lr()[0]}
            row["readout"] = StepReadout(loss, grad_norm)
            if pending is not None:
                self.log_step(pending, progress)
            pending = row
            if cfg.eval_every and trainer.step % cfg.eval_every == 0 and trainer.step != self.steps:
                self.evaluate(row)
                self.log_step(row, progress)
                pending = None
        if pending is not None:
            self.log_step(pending, progress)
        trainer.epoch = epoch + 1

    def end_epoch(self) -> None:
        """Evaluate (once per epoch unless ``eval_every``) and save the resume state, except after the last."""
        trainer = self.trainer
        if not self.cfg.eval_every and trainer.epoch < self.epochs:
            row = {"epoch": trainer.epoch, "step": trainer.step}
            self.evaluate(row)
            if self.ctx.is_main:
                trainer.log.write(row)
        if self.ctx.is_main and trainer.epoch < self.epochs:
            seconds = trainer.seconds + time.time() - self.started
            _save_state(dataclasses.replace(trainer, seconds=seconds), self.cfg, resume_state(self.checkpoint))
        distributed.barrier()

    def evaluate(self, row: dict) -> None:
        """Rank 0 evaluates and logs; the others wait for it."""
        if self.ctx.is_main and self.val_batches is not None:
            metrics, _ = self.task.evaluate(self.model, self.val_batches)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        self.model.train()
        distributed.barrier()

    def log_step(self, row: dict, progress: tqdm) -> None:
        """Read a step's loss and gradient norm, show them and log the row (rank 0)."""
        row["train_loss"], row["grad_norm"] = row.pop("readout").read()
        progress.set_postfix(loss=f"{row['train_loss']:.4f}", grad=f"{row['grad_norm']:.2f}")
        if self.ctx.is_main:
            self.trainer.log.write(row)

    def finish(self, extra: dict | None) -> tuple[nn.Module, dict, pd.DataFrame]:
        """The final evaluation, the checkpoint with its sidecar; the resume state goes. A run that made no
        optimizer step (no training batch) saves nothing: an earlier checkpoint stays as it was."""
        trainer = self.trainer
        if trainer.step == 0:
            raise RuntimeError(
                f"{self.cfg.name} fold {self.fold}: no training step was made (no training batch), so "
                f"{self.checkpoint.name} is left as it was"
            )
        metrics, preds = (
            self.task.evaluate(self.model, self.val_batches) if self.val_batches is not None else ({}, pd.DataFrame())
        )
        trainer.log.write({"epoch": self.epochs, "step": trainer.step, **{f"val_{k}": v for k, v in metrics.items()}})
        seconds = trainer.seconds + time.time() - self.started
        sidecar = save_checkpoint(self.model, self.cfg, self.checkpoint, self.fold, metrics, seconds, extra)
        resume_state(self.checkpoint).unlink(missing_ok=True)
        return self.model, sidecar, preds


class StepReadout:
    """A step's loss and gradient norm on their way to the host.

    On a GPU the copy is queued behind the step and waited for only when read, one step later: reading at once
    (``.tolist()``) would wait for every step queued so far, leaving the device idle until the host queues the
    next one.
    """

    def __init__(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        values = torch.stack([loss, grad_norm]).float()
        self.ready: torch.cuda.Event | None = None
        if values.is_cuda:
            values = values.to("cpu", non_blocking=True)  # into pinned memory, asynchronously
            self.ready = torch.cuda.Event()
            self.ready.record()
        self.values = values

    def read(self) -> tuple[float, float]:
        if self.ready is not None:
            self.ready.synchronize()  # this step only, not the ones queued after it
        loss, grad_norm = self.values.tolist()
        return loss, grad_norm


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a distributed sampler the epoch, so every epoch (and a resumed one) has its own fixed order."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _limit(loader: Any, cfg: TrainConfig) -> Any:
    """``fast_dev_run`` and ``overfit_batch`` use only the first batch."""
    return [next(iter(loader))] if (cfg.fast_dev_run or cfg.overfit_batch) else loader


class CurveLog:
    """CSV of the training curves, a row per write. Rows are appended; the file is rewritten only when a new
    column (metric) appears or the rows were replaced (a resumed run drops what its lost epoch had logged)."""

    def __init__(self, path: Path) -> None:
        self.path, self._rows, self.columns, self._in_file = path, [], [], 0
        path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> list[dict]:
        return self._rows

    @rows.setter
    def rows(self, rows: list[dict]) -> None:
        self._rows, self.columns, self._in_file = list(rows), [], 0

    def write(self, row: dict) -> None:
        self._rows.append(row)
        if self._in_file == len(self._rows) - 1 and all(k in self.columns for k in row):
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.columns).writerow(row)
        else:
            self.columns = list(dict.fromkeys(k for r in self._rows for k in r))
            with self.path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self._rows)
        self._in_file = len(self._rows)


# --- checkpoints ---------------------------------------------------------------------------------
