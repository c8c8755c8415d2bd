"""The one training loop, the two stage tasks it runs, and checkpoints that rebuild their model alone.

A *task* knows a stage: how to turn a loader batch into device tensors (GPU augmentation included), its
loss, its predictions and its validation metrics. ``fit`` knows the rest, the same for both stages:
AdamW, cosine schedule stepped per batch, autocast (fp16 + grad scaler, or bf16 where supported; off
on the CPU), channels_last, gradient clipping and gradient-norm logging, evaluation cadence, a CSV log
of the curves, and the checkpoint with its JSON sidecar (resolved config, fold, seed, version, commit,
metrics); the weights file repeats the config fields that define the network, so a sidecar of another model fails
to load instead of predicting with the wrong input.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

import kaggle_utils
from kaggle_utils import distributed
from kaggle_utils.augment import Stage1Augment, Stage2Augment, resize, rotate_resize
from kaggle_utils.config import ConfigError, TrainConfig, apply_overrides, from_dict, to_dict
from kaggle_utils.constants import LEVELS, row_id
from kaggle_utils.loader import DeviceBatches
from kaggle_utils.losses import keypoint_l1, pseudo_label_loss, weighted_soft_cross_entropy
from kaggle_utils.metric import score_parts, solution_from_targets
from kaggle_utils.models import build_model, condition_rows
from kaggle_utils.paths import REPO_ROOT, RESUME_SUFFIX, resume_state

STAGE1_GRID = 256  # keypoint errors are reported in pixels of the 256 x 256 stage-1 grid


# --- environment ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the global numpy state
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """This process's GPU (its local rank's under ``torchrun``), else the CPU."""
    return distributed.context().device


def inference_devices() -> list[torch.device]:
    """Every GPU of the machine (both cards of Kaggle's "T4 x2"), else the CPU: test studies are split over them."""
    if not torch.cuda.is_available():
        return [torch.device("cpu")]
    return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16 = (8, 0)  # compute capability from which a card computes bf16 natively (Ampere: A100, then H100, ...)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. Not ``torch.cuda.is_bf16_supported()``: it says True on a
    T4 (7.5), which only emulates bf16, far slower than its fp16 tensor cores."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16


def autocast_dtype(device: torch.device, enabled: bool, preferred: str = "auto") -> torch.dtype | None:
    """The autocast type: None (fp32) on the CPU or when disabled; ``auto`` is bf16 on cards with native bf16
    (no grad scaler needed), fp16 with the grad scaler on older ones (T4, P100)."""
    if not enabled or device.type != "cuda":
        return None
    if preferred == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if preferred not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype {preferred!r} is not one of auto, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[preferred]


def mixed_precision(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (from ``autocast_dtype``) on ``device``; None runs fp32, as on the CPU."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def inference_precision(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """Prediction in the training's precision: fp16 on a T4, bf16 on cards with it natively, fp32 on the CPU."""
    return mixed_precision(device, autocast_dtype(device, cfg.amp, cfg.amp_dtype))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# --- tasks ---------------------------------------------------------------------------------------
class Task(Protocol):
    def loss(self, model: nn.Module, batch: dict, train: bool) -> tuple[torch.Tensor, dict]: ...

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]: ...


def device_images(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch (B, [levels,] F, H, W) uint8 on ``device`` as float in [0, 1]; only uint8 crosses the bus."""
    return image.to(device, non_blocking=True).float().div_(255.0)


@dataclass
class KeypointTask:
    """Stage 1: frames as channels -> augmentation moves image and keypoints together -> 10 points."""

    cfg: TrainConfig
    device: torch.device
    augment: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.augment = Stage1Augment(self.cfg).to(self.device)

    def inputs(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = device_images(batch["image"], self.device)  # (B, F, H, W)
        mask = batch["mask"].to(self.device)
        target = batch["target"].to(self.device)  # (B, 10, 2) relative
        size = self.cfg.img_size
        if train and self.cfg.augment:
            image, points = self.augment(image, target * image.shape[-1])
            target = (points / size).clamp(0, 1)
        elif image.shape[-1] != size:
            image = resize(image, size)  # the same resampling as the training augmentation
        return image.unsqueeze(2), mask, target  # (B, F, 1, S, S)

    def loss(self, model: nn.Module, batch: dict, train: bool) -> tuple[torch.Tensor, dict]:
        image, mask, target = self.inputs(batch, train)
        pred = model(image, mask)
        return keypoint_l1(pred.float(), target), {"pred": pred.detach().float(), "target": target}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        image, mask, _ = self.inputs(batch, train=False)
        with inference_precision(self.device, self.cfg):
            return model(image, mask).float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]:
        """The ``keypoint_metrics`` of the loader's batches, and the predictions per series."""
        model.eval()
        preds, targets, series = [], [], []
        for batch in loader:
            preds.append(self.predict(model, batch).cpu())
            targets.append(batch["target"].cpu())
            series += [int(s) for s in batch["series_id"]]
        pred, target = torch.cat(preds), torch.cat(targets)
        return keypoint_metrics(pred, target), keypoint_frame(series, pred)


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


def keypoint_frame(series_ids: list[int], pred: torch.Tensor) -> pd.DataFrame:
    """(series, 10 points) predictions as rows ``series_id, point, relative_x, relative_y``."""
    n_points = pred.shape[1]
    values = pred.reshape(-1, 2).numpy()
    return pd.DataFrame(
        {
            "series_id": np.repeat(series_ids, n_points),
            "point": np.tile(np.arange(n_points), len(series_ids)),
            "relative_x": values[:, 0],
            "relative_y": values[:, 1],
        }
    )


@dataclass
class ClassifierTask:
    """Stage 2: all levels and frames as channels through one augmentation -> per-level severity logits."""

    cfg: TrainConfig
    device: torch.device
    targets: pd.DataFrame | None = None  # the targets table, for the validation score
    augment: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.augment = Stage2Augment(self.cfg).to(self.device)
        self.rows = condition_rows(self.cfg.condition)

    def inputs(self, batch: dict, train: bool, angles: tuple[float, ...] = (0.0,)) -> tuple[torch.Tensor, ...]:
        image = device_images(batch["image"], self.device)  # (B, 5, F, H, W)
        b, levels, frames, h, w = image.shape
        flat = image.reshape(b, levels * frames, h, w)
        size = self.cfg.img_size
        if train:
            flat = self.augment(flat) if self.cfg.augment else resize(flat, size)
        else:
            flat = rotate_resize(flat, angles, size)
        copies = flat.shape[0] // b
        image = flat.reshape(b * copies, levels, frames, 1, size, size)
        mask = batch["mask"].to(self.device).repeat_interleave(copies, dim=0)
        return image, mask, batch["target"].to(self.device)

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

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict, angles: tuple[float, ...] = (0.0,)) -> torch.Tensor:
        """Probabilities (B, 5, R, 3), averaged over the TTA rotations (all in one forward pass)."""
        image, mask, _ = self.inputs(batch, train=False, angles=angles)
        with inference_precision(self.device, self.cfg):
            logits = model(image, mask)["logits"]
        probs = logits.float().softmax(-1)
        return probs.reshape(-1, len(angles), *probs.shape[1:]).mean(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> tuple[dict[str, float], pd.DataFrame]:
        """Weighted cross-entropy and the competition score (families this model predicts) on the loader."""
        model.eval()
        losses, frames = [], []
        for batch in loader:
            probs = self.predict(model, batch)
            target = batch["target"].to(self.device)
            losses.append(float(weighted_soft_cross_entropy(probs.clamp_min(1e-7).log(), target)))
            frames.append(level_frame(batch["study_id"], batch["series_id"], probs.cpu().numpy(), self.rows))
        preds = pd.concat(frames, ignore_index=True)
        metrics = {"loss": float(np.mean(losses))}
        if self.targets is not None:
            metrics.update(score_predictions(preds, self.targets))
        return metrics, preds


def level_frame(study_ids: Any, series_ids: Any, probs: np.ndarray, rows: tuple[str, ...]) -> pd.DataFrame:
    """Per-series probabilities (B, 5, R, 3) as rows ``study_id, series_id, row_id, normal_mild, moderate, severe``."""
    records = []
    for study, series, per_level in zip(study_ids, series_ids, probs, strict=True):
        for level, per_row in zip(LEVELS, per_level, strict=True):
            for condition, p in zip(rows, per_row, strict=True):
                records.append((int(study), int(series), row_id(int(study), f"{condition}_{level}"), *p.tolist()))
    return pd.DataFrame(records, columns=["study_id", "series_id", "row_id", "normal_mild", "moderate", "severe"])


def score_predictions(preds: pd.DataFrame, targets: pd.DataFrame) -> dict[str, float]:
    """Score row predictions (averaged per row id over series) on the labelled rows they cover."""
    per_row = preds.groupby("row_id")[["normal_mild", "moderate", "severe"]].mean().reset_index()
    solution = solution_from_targets(targets[targets["study_id"].isin(preds["study_id"])])
    solution = solution[solution["row_id"].isin(per_row["row_id"])]
    if solution.empty:
        return {}
    return score_parts(solution, per_row, "row_id")


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


def place_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """``model`` on ``device``, channels_last on a GPU when the config asks for it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last and device.type == "cuda" else model


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
            "config": _run_fields(to_dict(cfg)),
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


RUN_INDEPENDENT_FIELDS = ("resume", "num_workers", "eval_every")
"""Config fields that do not change what a run computes: a resume state or a finished checkpoint saved with
other values of these still counts as the same run."""


def _run_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_INDEPENDENT_FIELDS}


def same_run(config: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a saved config (sidecar or resume state) describes the run ``cfg`` asks for."""
    return _run_fields(config) == _run_fields(json.loads(json.dumps(to_dict(cfg))))


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
    ctx = distributed.context()
    device = task.device
    model = prepare_model(cfg, device)
    seed_everything(cfg.seed + ctx.rank)  # same weights everywhere, but each process its own augmentation
    trained = model
    if ctx.world_size > 1:
        device_ids = [ctx.local_rank] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed within a run
    epochs = 1 if cfg.fast_dev_run else cfg.epochs
    batches = DeviceBatches(_limit(train_loader, cfg), device)
    steps = epochs * len(batches)
    optimizer = make_optimizer(model, cfg, device)
    dtype = autocast_dtype(device, cfg.amp, cfg.amp_dtype)
    trainer = Trainer(
        model,
        optimizer,
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=cfg.lr_min),
        torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        CurveLog(checkpoint.with_suffix(".log.csv")),
    )
    state_path = resume_state(checkpoint)
    _restore(trainer, cfg, state_path, ctx)
    if cfg.overfit_batch:
        val_batches = batches
    elif val_loader is None:  # a final model on every study: nothing held out
        val_batches = None
    else:
        val_batches = DeviceBatches(_limit(val_loader, cfg), device)

    def evaluate(row: dict) -> None:
        """Rank 0 evaluates and logs; the others wait for it."""
        if ctx.is_main and val_batches is not None:
            metrics, _ = task.evaluate(model, val_batches)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        model.train()
        distributed.barrier()

    def log_step(row: dict, progress: tqdm) -> None:
        """Read a step's loss and gradient norm, show them and log the row (rank 0)."""
        row["train_loss"], row["grad_norm"] = row.pop("readout").read()
        progress.set_postfix(loss=f"{row['train_loss']:.4f}", grad=f"{row['grad_norm']:.2f}")
        if ctx.is_main:
            trainer.log.write(row)

    started = time.time()
    for epoch in range(trainer.epoch, epochs):
        set_epoch(train_loader, epoch)
        model.train()
        progress = tqdm(
            batches, desc=f"{cfg.name} f{fold} epoch {epoch + 1}/{epochs}", leave=False, disable=not ctx.is_main
        )
        pending = None  # the previous step's row: read once this step is queued, so the device never idles
        for batch in progress:
            loss, grad_norm = train_step(trained, task, batch, optimizer, trainer.scaler, dtype, cfg.grad_clip)
            trainer.scheduler.step()
            trainer.step += 1
            row = {"epoch": epoch + 1, "step": trainer.step, "lr": trainer.scheduler.get_last_lr()[0]}
            row["readout"] = StepReadout(loss, grad_norm)
            if pending is not None:
                log_step(pending, progress)
            pending = row
            if cfg.eval_every and trainer.step % cfg.eval_every == 0 and trainer.step != steps:
                evaluate(row)
                log_step(row, progress)
                pending = None
        if pending is not None:
            log_step(pending, progress)
        trainer.epoch = epoch + 1
        if not cfg.eval_every and trainer.epoch < epochs:
            row = {"epoch": trainer.epoch, "step": trainer.step}
            evaluate(row)
            if ctx.is_main:
                trainer.log.write(row)
        if ctx.is_main and trainer.epoch < epochs:
            _save_state(dataclasses.replace(trainer, seconds=trainer.seconds + time.time() - started), cfg, state_path)
        distributed.barrier()
    if not ctx.is_main:
        return model, {}, pd.DataFrame()
    metrics, preds = task.evaluate(model, val_batches) if val_batches is not None else ({}, pd.DataFrame())
    trainer.log.write({"epoch": epochs, "step": trainer.step, **{f"val_{k}": v for k, v in metrics.items()}})
    seconds = trainer.seconds + time.time() - started
    sidecar = save_checkpoint(model, cfg, checkpoint, fold, metrics, seconds, extra)
    state_path.unlink(missing_ok=True)
    return model, sidecar, preds


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
MODEL_FIELDS_KEY = "__config__"
"""Entry of the weights file that repeats the config fields the weights were trained for (a JSON string)."""

MODEL_FIELDS = ("plane", "model", "backbone", "condition", "n_frames", "img_size")
"""Config fields that define the network and its input; frames and size do not change any weight shape, so only
this copy inside the weights file can tell that a sidecar describes another model."""


def _model_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in MODEL_FIELDS if k in config}


def _check_model_fields(saved: str | None, config: dict[str, Any]) -> None:
    """Raise when the weights were saved for other values than the sidecar's; checkpoints without the entry pass."""
    if saved is None:
        return
    trained, described = json.loads(saved), _model_fields(config)
    differ = [
        f"{k}: trained {trained.get(k)!r}, sidecar {described.get(k)!r}"
        for k in MODEL_FIELDS
        if trained.get(k) != described.get(k)
    ]
    if differ:
        raise RuntimeError("; ".join(differ))


INIT_FIELDS = ("model", "backbone", "condition")
"""Fields a checkpoint to fine-tune from must share with the config (the plane, frames and size may differ)."""


def load_initial_weights(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with the weights of ``cfg.init_checkpoint``, a finished checkpoint of this project, to fine-tune
    from (another plane, more data, a round-2 run). The error names the file and what does not fit."""
    path = Path(cfg.init_checkpoint).expanduser()
    if path.name.endswith(RESUME_SUFFIX) or not path.is_file():
        what = "the resume state of an unfinished run" if path.is_file() else "no such file"
        raise ConfigError(f"init_checkpoint={cfg.init_checkpoint!r}: {what}; give a finished checkpoint (*.pt)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state.pop(MODEL_FIELDS_KEY, "{}"))
    differ = [
        f"{k}: {saved[k]!r} there, {getattr(cfg, k, None)!r} here"
        for k in INIT_FIELDS
        if k in saved and saved[k] != getattr(cfg, k, None)
    ]
    if differ:
        raise ConfigError(f"init_checkpoint {path} is another network than {cfg.name}'s: {'; '.join(differ)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"init_checkpoint {path}: its weights do not fit {cfg.name}'s model: {error}") from error
    return model


def save_checkpoint(
    model: nn.Module, cfg: TrainConfig, path: Path, fold: int, metrics: dict, seconds: float, extra: dict | None = None
) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state[MODEL_FIELDS_KEY] = json.dumps(_model_fields(to_dict(cfg)))
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    sidecar = {
        "config": to_dict(cfg),
        "fold": fold,
        "seed": cfg.seed,
        "version": kaggle_utils.__version__,
        "git_commit": git_commit(),
        "train_seconds": round(seconds, 1),
        "metrics": {"val": metrics},
        **(extra or {}),
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return sidecar


FP16_MAX = torch.finfo(torch.float16).max


def half_precision_copy(source: Path, target: Path) -> tuple[int, int]:
    """Copy a checkpoint with its float tensors in fp16, as the weights dataset holds them: half the upload and
    half the files the kernel reads. ``load_checkpoint`` casts them back into the model's fp32 parameters, so an
    fp16 autocast (a T4) computes with the same weights as from the fp32 file; bf16 and fp32 round them further
    or not at all (within 1e-3 relative, tested). A tensor beyond fp16's range stays fp32.
    Returns the sizes in bytes of the source and the copy."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    halved = {key: _to_half(value) for key, value in state.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save(halved, tmp)
    tmp.replace(target)
    return source.stat().st_size, target.stat().st_size


def _to_half(value: Any) -> Any:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == torch.float16:
        return value
    if value.numel() and value.abs().max() > FP16_MAX:
        return value
    return value.half()


def load_checkpoint(path: Path, device: torch.device | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a model from its JSON sidecar alone and load its weights (no pretrained download)."""
    sidecar_path = Path(path).with_suffix(".json")
    if not sidecar_path.exists():
        raise FileNotFoundError(f"{path}: no sidecar {sidecar_path.name} beside the weights")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        cfg = apply_overrides(from_dict(sidecar["config"]), {"pretrained": False, "weights_file": ""})
        model = build_model(cfg)
    except (ValueError, KeyError) as error:  # ConfigError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{sidecar_path}: this version cannot rebuild the model it describes: {error}") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        _check_model_fields(state.pop(MODEL_FIELDS_KEY, None), sidecar["config"])
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(
            f"{path}: weights do not match the model its sidecar describes ({cfg.name}): {error}"
        ) from error
    return place_model(model, cfg, device or default_device()).eval(), cfg, sidecar
