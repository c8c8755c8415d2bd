"""The fit search against a fake card: its memory a limit on a cost per sample, halved by gradient checkpointing."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.presets import preset
from kaggle_utils.dev import preflight_search as fit
from kaggle_utils.dev.preflight_search import FITS, FITS_WITH, NO_FIT, Measurement


class FakeCard:
    """A card of ``limit`` units: a step takes one unit per sample, half with gradient checkpointing."""

    def __init__(self, limit: float) -> None:
        self.limit, self.tried, self.released = limit, [], 0
        self.buffers: list[weakref.ref] = []

    def cost(self, cfg: TrainConfig) -> float:
        return cfg.batch_size * (0.5 if cfg.grad_checkpointing else 1.0)

    def measure(self, cfg: TrainConfig) -> Measurement:
        self.tried.append((cfg.batch_size, cfg.grad_checkpointing))
        buffer = torch.empty(cfg.batch_size)  # what a try holds when it runs out of memory
        self.buffers.append(weakref.ref(buffer))
        if self.cost(cfg) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return Measurement(train_ms=10.0 * cfg.batch_size, eval_ms=1.0, peak_gib=self.cost(cfg))

    def release(self) -> None:
        gc.collect()
        assert self.buffers[-1]() is None, "the failed try still holds its tensors"
        self.released += 1


def test_a_preset_that_fits_is_tried_once_as_it_is() -> None:
    card = FakeCard(limit=100)
    result = fit.search(preset("fo"), card.measure, card.release)
    assert result.verdict == FITS and result.overrides == {} and card.tried == [(32, False)]
    assert result.measurement == Measurement(320.0, 1.0, 32.0) and result.lr_note == ""


def test_gradient_checkpointing_comes_before_a_smaller_batch() -> None:
    card = FakeCard(limit=20)  # 32 samples do not fit, 32 with checkpointing (16 units) do
    result = fit.search(preset("fo"), card.measure, card.release)
    assert result.verdict == FITS_WITH and result.overrides == {"grad_checkpointing": True}
    assert card.tried == [(32, False), (32, True)] and result.measurement.peak_gib == 16
    assert result.lr_note == ""  # the same batch: the recipe's optimisation is unchanged


def test_the_largest_batch_that_fits_is_found_by_halving_then_bisecting() -> None:
    card = FakeCard(limit=9)  # with checkpointing, up to 18 samples
    result = fit.search(preset("fo"), card.measure, card.release)
    assert result.verdict == FITS_WITH and result.overrides == {"grad_checkpointing": True, "batch_size": 18}
    assert [b for b, _ in card.tried] == [32, 32, 16, 24, 20, 18]
    assert card.released == len(result.attempts) == len(card.tried)  # memory released after every try
    assert result.measurement == Measurement(180.0, 1.0, 9.0)
    assert "lr stays 0.0001" in result.lr_note and "5.63e-05" in result.lr_note  # said, never changed
    assert "lr" not in result.overrides


def test_halving_down_to_one_sample() -> None:
    card = FakeCard(limit=0.5)  # one sample with checkpointing
    result = fit.search(preset("sp2"), card.measure, card.release)
    assert result.overrides == {"grad_checkpointing": True, "batch_size": 1}
    assert [b for b, _ in card.tried] == [32, 32, 16, 8, 4, 2, 1]


def test_a_preset_that_does_not_fit_even_one_sample() -> None:
    card = FakeCard(limit=0.1)
    result = fit.search(preset("su"), card.measure, card.release)
    assert result.verdict == NO_FIT and result.overrides == {} and result.measurement is None
    assert not any(a.fits for a in result.attempts) and card.tried[-1] == (1, True)


def test_checkpointing_already_on_is_not_tried_twice() -> None:
    card = FakeCard(limit=5)
    result = fit.search(preset("fo", overrides={"grad_checkpointing": True}), card.measure, card.release)
    assert card.tried[:2] == [(32, True), (16, True)] and result.overrides == {"batch_size": 10}


def test_only_running_out_of_memory_is_an_answer() -> None:
    assert fit.out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert fit.out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not fit.out_of_memory(RuntimeError("shape mismatch")) and not fit.out_of_memory(ValueError("out of memory"))

    def broken(cfg: TrainConfig) -> Measurement:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        fit.search(preset("fo"), broken, lambda: None)
