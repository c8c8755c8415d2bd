"""Whether a preset's training step fits the card, and what makes it fit when it does not.

The preset is tried as it is; when it runs out of memory, with gradient checkpointing at the same batch (the same
optimisation, about 30 % slower); when that does not fit either, the batch size is halved until one fits, then
bisected between the largest that fitted and the smallest that did not. The memory of a failed try is released
before the next one. A smaller batch changes the recipe: the learning rate is left as it is and the verdict says
so, with what the linear scaling rule would give, for the user to decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kaggle_utils.core.config import TrainConfig, apply_overrides

FITS = "fits"
FITS_WITH = "fits with these overrides"
NO_FIT = "does not fit"

BATCH_MULTIPLE = 2
"""Granularity of the batch-size bisection: an even batch also splits over two cards under torchrun."""


@dataclass(frozen=True)
class Measurement:
    """A config's step on the card: ms per training step and per validation batch, peak memory (None off a GPU)."""

    train_ms: float
    eval_ms: float
    peak_gib: float | None


@dataclass(frozen=True)
class Attempt:
    """One try: the overrides on top of the preset, and what it measured (None: out of memory)."""

    overrides: dict[str, Any]
    measurement: Measurement | None

    @property
    def fits(self) -> bool:
        return self.measurement is not None


@dataclass
class Fit:
    """The verdict for a preset, the overrides it needs (empty when it fits as it is) and every try."""

    cfg: TrainConfig
    verdict: str
    overrides: dict[str, Any] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def measurement(self) -> Measurement | None:
        """The try the verdict rests on: the one with the verdict's overrides."""
        return next((a.measurement for a in self.attempts if a.fits and a.overrides == self.overrides), None)

    @property
    def lr_note(self) -> str:
        """What a smaller batch means for the learning rate, which is not changed silently."""
        batch = self.overrides.get("batch_size")
        if batch is None:
            return ""
        scaled = self.cfg.lr * batch / self.cfg.batch_size
        return (
            f"batch {batch} instead of {self.cfg.batch_size}: lr stays {self.cfg.lr:g} "
            f"(linear scaling would give {scaled:.3g}; set lr yourself if you want it)"
        )


Measure = Callable[[TrainConfig], Measurement]
"""Times a config's steps on the card; raises ``torch.cuda.OutOfMemoryError`` when it does not fit."""


def out_of_memory(error: BaseException) -> bool:
    """CUDA's allocator raises ``OutOfMemoryError``; cuDNN and cuBLAS running short raise a plain ``RuntimeError``."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "alloc_failed" in message)


def attempt(cfg: TrainConfig, overrides: dict[str, Any], measure: Measure, release: Callable[[], None]) -> Attempt:
    """Measure ``cfg`` with ``overrides``; out of memory is an answer, not an error. ``release`` runs after the
    try has let go of its tensors (the exception and its frames are gone by then), so the next try starts clean."""
    measurement = None
    try:
        measurement = measure(apply_overrides(cfg, overrides))
    except RuntimeError as error:  # OutOfMemoryError is one
        if not out_of_memory(error):
            raise
    release()
    return Attempt(dict(overrides), measurement)


def search(cfg: TrainConfig, measure: Measure, release: Callable[[], None]) -> Fit:
    """The verdict for ``cfg``: as it is, else with gradient checkpointing, else the largest batch that fits."""
    tries = [attempt(cfg, {}, measure, release)]
    if tries[-1].fits:
        return Fit(cfg, FITS, {}, tries)
    base: dict[str, Any] = {}
    if not cfg.grad_checkpointing:
        base = {"grad_checkpointing": True}
        tries.append(attempt(cfg, base, measure, release))
        if tries[-1].fits:
            return Fit(cfg, FITS_WITH, base, tries)
    batch = largest_batch(cfg, base, measure, release, tries)
    if batch is None:
        return Fit(cfg, NO_FIT, {}, tries)
    return Fit(cfg, FITS_WITH, {**base, "batch_size": batch}, tries)


def largest_batch(
    cfg: TrainConfig, base: dict[str, Any], measure: Measure, release: Callable[[], None], tries: list[Attempt]
) -> int | None:
    """The largest batch below ``cfg.batch_size`` that fits with ``base`` (None: not even 1); every try is appended
    to ``tries``."""

    def fits(batch: int) -> bool:
        tries.append(attempt(cfg, {**base, "batch_size": batch}, measure, release))
        return tries[-1].fits

    failed, batch = cfg.batch_size, cfg.batch_size // 2
    while batch >= 1 and not fits(batch):
        failed, batch = batch, batch // 2
    if batch < 1:
        return None
    while failed - batch > BATCH_MULTIPLE:
        middle = (batch + failed) // 2 // BATCH_MULTIPLE * BATCH_MULTIPLE
        if middle <= batch:
            break
        if fits(middle):
            batch = middle
        else:
            failed = middle
    return batch
