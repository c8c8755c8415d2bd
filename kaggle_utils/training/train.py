"""Training runs: one preset over the requested folds, from the hand-off tables to checkpoints and OOF files.

The notebooks call ``train_folds`` once per preset; it builds the datasets and loaders of each fold,
runs ``engine.fit`` and writes the fold's out-of-fold predictions (keypoints for stage 1, level
probabilities for stage 2) to ``WORK_DIR/oof``. A fold whose checkpoint, sidecar (of the same
configuration) and OOF file exist is skipped, and an interrupted fold resumes, so a long run can simply
be started again.

The command line runs the same on one or several GPUs (``make train-all`` uses it)::

    python -m kaggle_utils.training.train --presets fs sp1 --folds 0 1 2 3 --profile full
    torchrun --standalone --nproc_per_node=2 -m kaggle_utils.training.train --presets su --set batch_size=64
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler

from kaggle_utils.core import config, distributed, parameters, presets
from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.constants import ALL_STUDIES_FOLD
from kaggle_utils.core.devices import default_device
from kaggle_utils.core.paths import Paths
from kaggle_utils.evaluation import viz
from kaggle_utils.models.checkpoints import same_run
from kaggle_utils.training import denoise
from kaggle_utils.training.data import CropDataset
from kaggle_utils.training.engine import fit
from kaggle_utils.training.kinds import stage_kind
from kaggle_utils.training.loader import BatchLoader, collate


@dataclass(frozen=True)
class FoldResult:
    preset: str
    fold: int
    metrics: dict
    seconds: float
    checkpoint: Path  # its curves PNG sits beside it (``*.curves.png``)


def training_samples(paths: Paths, cfg: TrainConfig) -> pd.DataFrame:
    """The samples a config trains on, with their folds (``kinds.stage_kind``: series or levels)."""
    return stage_kind(cfg).samples(paths, cfg)


def datasets(paths: Paths, cfg: TrainConfig, samples: pd.DataFrame, fold: int) -> tuple[Dataset, Dataset | None]:
    """Training and validation sets of ``fold`` (``training_samples`` rows); fold -1 (``ALL_STUDIES_FOLD``) trains on
    every sample and has no validation set."""
    every = fold == ALL_STUDIES_FOLD
    train, val = (samples, None) if every else (samples[samples["fold"] != fold], samples[samples["fold"] == fold])
    if train.empty or (val is not None and val.empty):
        held = 0 if val is None else len(val)
        raise ValueError(f"fold {fold} leaves {len(train)} training and {held} validation samples for {cfg.name}")
    return stage_kind(cfg).datasets(paths, cfg, train, val, fold)


def loader(dataset: Dataset, cfg: TrainConfig, train: bool) -> BatchLoader:
    """Batches loaded by ``cfg.num_workers`` threads. Training: every process draws its share of one seeded
    permutation per epoch (with one process, the whole of it), so N processes at batch B / N see the batches
    one process sees at batch B."""
    ctx = distributed.context()
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed) if train else None
    return BatchLoader(
        dataset,
        batch_size=ctx.per_process(cfg.batch_size) if train else cfg.batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) > cfg.batch_size,
        workers=cfg.num_workers,
        seed=cfg.seed + ctx.rank,
    )


def finished(paths: Paths, cfg: TrainConfig, fold: int) -> FoldResult | None:
    """The result of a fold trained before with the same configuration (checkpoint, sidecar and OOF exist)."""
    checkpoint = paths.checkpoint(cfg.name, fold, cfg.seed)
    sidecar_path = checkpoint.with_suffix(".json")
    oof = paths.oof_dir / f"{checkpoint.stem}.csv"
    has_oof = oof.exists() or fold == ALL_STUDIES_FOLD  # a final model has no held-out studies
    if not (cfg.resume and checkpoint.exists() and sidecar_path.exists() and has_oof):
        return None
    sidecar = json.loads(sidecar_path.read_text())
    if not same_run(sidecar["config"], cfg):
        return None
    return FoldResult(cfg.name, fold, sidecar["metrics"]["val"], sidecar["train_seconds"], checkpoint)


def train_folds(
    paths: Paths, cfg: TrainConfig, folds: list[int], device: torch.device | None = None
) -> list[FoldResult]:
    """Train ``cfg`` on each fold; write ``models/{name}-f{fold}-s{seed}.pt`` (+ sidecar, curve log) and OOF.
    Fold -1 (``ALL_STUDIES_FOLD``) is the final model on every study: ``{name}-all-s{seed}.pt``, no OOF.

    Folds trained before with the same configuration are skipped (``cfg.resume``). Under ``torchrun`` every
    process must call this; rank 0 writes the files and returns the results, the others return nothing.
    """
    device = device or default_device()
    ctx = distributed.context()
    samples = training_samples(paths, cfg)
    results = []
    for fold in folds:
        done = finished(paths, cfg, fold)
        if done is not None:
            if ctx.is_main:
                print(f"{done.checkpoint.name}: trained before with this configuration, skipped")
                results.append(done)
            continue
        train_set, val_set = datasets(paths, cfg, samples, fold)
        task = stage_kind(cfg).task(cfg, device, paths)
        checkpoint = paths.checkpoint(cfg.name, fold, cfg.seed)
        val_loader = None if val_set is None else loader(val_set, cfg, False)
        _, sidecar, oof = fit(cfg, task, loader(train_set, cfg, True), val_loader, checkpoint, fold)
        if not ctx.is_main:
            continue
        if val_set is not None:
            paths.oof_dir.mkdir(parents=True, exist_ok=True)
            oof.assign(fold=fold).to_csv(paths.oof_dir / f"{checkpoint.stem}.csv", index=False)
        save_curves(checkpoint)
        results.append(FoldResult(cfg.name, fold, sidecar["metrics"]["val"], sidecar["train_seconds"], checkpoint))
    return results


def augmentation_preview(paths: Paths, cfg: TrainConfig, draws: int = 5, fold: int = 0, seed: int = 0) -> plt.Figure:
    """The first training sample of ``fold`` as the model sees it: without augmentation (as validation shows it),
    then ``draws`` draws of the training augmentation, the random sequence flip included (with an even number of
    frames, a flipped view's middle frame is the neighbouring slice); stage 1's keypoints are drawn where the
    augmentation moved them. Draws come from ``seed``, apart from the global random state."""
    train_set = copy.copy(datasets(paths, cfg, training_samples(paths, cfg), fold)[0])
    if isinstance(train_set, CropDataset):  # every view from the same series (training picks one per access)
        study_id, series_ids = train_set.records[0]
        train_set.records = [(study_id, series_ids[:1])]
    plain_set = copy.copy(train_set)
    plain_set.flip = False
    image = np.empty((1 + draws, *train_set.image_shape()), np.uint8)
    samples = [
        (train_set if draw else plain_set).fill(0, image[draw], np.random.default_rng((seed, draw)))
        for draw in range(1 + draws)
    ]
    batch = {"image": torch.from_numpy(image), **collate(samples)}
    cpu = torch.device("cpu")
    task = stage_kind(cfg).task(cfg, cpu, None)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        plain = task.inputs(_rows(batch, slice(0, 1)), train=False)
        augmented = task.inputs(_rows(batch, slice(1, None)), train=True)
    image, mask, target = (torch.cat(pair) for pair in zip(plain, augmented, strict=True))
    shown = middle_frames(image.squeeze(-3), mask).numpy()
    keypoints = target.numpy() if cfg.stage == 1 else None
    return viz.augmentation_figure(shown, keypoints, title=f"{cfg.name}: a training sample of fold {fold}")


def _rows(batch: dict, rows: slice) -> dict:
    return {key: value[rows] for key, value in batch.items()}


def middle_frames(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, [levels,] F, S, S) -> (B, [levels,] S, S): each sample's middle frame among those its mask keeps."""
    picked = []
    for sample, kept in zip(frames, mask, strict=True):
        indices = kept.nonzero().squeeze(1)
        picked.append(sample[..., indices[len(indices) // 2], :, :])
    return torch.stack(picked)


def save_curves(checkpoint: Path) -> Path:
    """The training curves of a checkpoint's CSV log as a PNG beside it (``*.curves.png``)."""
    log = pd.read_csv(checkpoint.with_suffix(".log.csv"))
    figure = viz.curves_figure(log, title=checkpoint.stem)
    path = viz.save_figure(figure, checkpoint.with_suffix(".curves.png"))
    plt.close(figure)
    return path


def train_presets(paths: Paths, configs: list[TrainConfig], folds: list[int]) -> list[FoldResult]:
    """Every preset on every fold (each resumable, see ``train_folds``), then one table of the results printed."""
    results = [result for cfg in configs for result in train_folds(paths, cfg, folds)]
    print(results_table(results).round(4).to_string(index=False))
    return results


def results_table(results: list[FoldResult]) -> pd.DataFrame:
    """One row per trained fold: preset, fold, seconds and the final validation metrics."""
    return pd.DataFrame([{"preset": r.preset, "fold": r.fold, "seconds": r.seconds, **r.metrics} for r in results])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train presets over folds (resumable; run it under torchrun for DDP).")
    parser.add_argument("--presets", nargs="+", required=True, help=f"any of {', '.join(presets.FULL_PRESETS)}")
    parser.add_argument(
        "--folds", nargs="+", type=int, default=[0, 1, 2, 3], help="-1: a final model on every study (no validation)"
    )
    parser.add_argument("--profile", default="auto", help="full, demo, smoke or auto (full on a GPU)")
    parser.add_argument("--data-dir", default="", help="competition-layout folder (default: as the notebooks)")
    parser.add_argument("--work-dir", default="", help="output folder holding 01's tables and arrays")
    parameters.add_override_arguments(parser)
    parser.add_argument(
        "--run", default="", help="train into WORK_DIR/RUN (round 2 of kaggle_utils.training.denoise), not WORK_DIR"
    )
    args = parser.parse_args(argv)
    try:
        overrides = parameters.parsed_overrides(args)
    except config.ConfigError as error:
        parser.error(str(error))
    ctx = distributed.init()
    try:
        paths = Paths.resolve(args.data_dir, args.work_dir)
        profile = presets.resolve_profile(args.profile)
        configs = [presets.preset(name, profile, overrides) for name in args.presets]  # all checked before training
        if args.run:  # a round of its own; its models folder gets round 1's localisers, so inference can use it alone
            round_paths = paths.with_run(args.run)
            if ctx.is_main:
                denoise.copy_stage1(paths, round_paths)
            paths = round_paths
        results = [r for cfg in configs for r in train_folds(paths, cfg, args.folds)]
        if ctx.is_main:
            print(results_table(results).round(4).to_string(index=False))
    finally:
        distributed.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
