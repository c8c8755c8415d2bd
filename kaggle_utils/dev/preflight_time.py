"""How long the recipe trains: per preset and fold, epochs x (training steps x ms per step + validation batches x ms
per batch), for a number of studies, from step times measured on the card.

A preset's samples follow its datasets (``training.data``): a sagittal preset has one sample per study (stage 2 draws
one of a study's series per access; stage 1 has one per series, and studies have about one series of each sagittal
view), an axial one one per study and level with an assigned slice. Training drops the last partial batch
(``train.loader``), validation keeps it, and validation runs once per epoch (``eval_every`` 0). Model building,
checkpoints and the loader's own time are left out: with the batch already on the card the step is the compute
(the loader adds about 5 % on an H100 with 4 threads, ``make bench-train``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.constants import ALL_STUDIES_FOLD

COMPETITION_STUDIES = 1975
"""Training studies of the competition (``train.csv``)."""

SAMPLES_PER_STUDY: dict[str, float] = {
    # Sagittal T1 1,980 and T2/STIR 1,974 series over 1,975 studies: one sample per study.
    "t1": 1.0,
    "t2": 1.0,
    # 19,220 (study, side, level) subarticular points: 9,610 (study, level) samples, 4.87 per study.
    "axial": 9610 / COMPETITION_STUDIES,
}
"""Training (and validation) samples per study by view, from the competition's series and coordinate files."""


@dataclass(frozen=True)
class StepTimes:
    """Milliseconds of one training step and of one validation batch of a preset, at its batch size."""

    train_ms: float
    eval_ms: float


def fold_samples(n_studies: int, view: str, fold: int, n_folds: int) -> tuple[int, int]:
    """(training, validation) samples of ``fold``: the other folds' studies train, its own validate; fold -1
    (``ALL_STUDIES_FOLD``, the final model) trains on every study and validates on none."""
    samples = n_studies * SAMPLES_PER_STUDY[view]
    if fold == ALL_STUDIES_FOLD:
        return round(samples), 0
    validation = round(samples / n_folds)
    return round(samples) - validation, validation


def train_steps(samples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: the last partial batch is dropped when there is more than one batch."""
    if samples <= 0:
        return 0
    return samples // batch_size if samples > batch_size else 1


def eval_batches(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)


def fold_hours(cfg: TrainConfig, times: StepTimes, n_studies: int, fold: int, n_folds: int) -> float:
    """Hours to train ``cfg`` on one fold of ``n_studies`` studies at the measured step times."""
    train, validation = fold_samples(n_studies, cfg.view, fold, n_folds)
    epoch_ms = train_steps(train, cfg.batch_size) * times.train_ms
    epoch_ms += eval_batches(validation, cfg.batch_size) * times.eval_ms
    epochs = 1 if cfg.fast_dev_run else cfg.epochs
    return epochs * epoch_ms / 3.6e6


def recipe_hours(cfg: TrainConfig, times: StepTimes, n_studies: int, folds: list[int], n_folds: int) -> float:
    """Hours to train ``cfg`` on every fold of ``folds``, one after the other on one card."""
    return sum(fold_hours(cfg, times, n_studies, fold, n_folds) for fold in folds)
