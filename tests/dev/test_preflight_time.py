"""The recipe's time: samples per fold, steps per epoch, validation batches, hours."""

from __future__ import annotations

import dataclasses

import pytest

from kaggle_utils.core.presets import preset
from kaggle_utils.dev import preflight_time as timing


def test_a_fold_trains_on_the_other_folds_studies_and_validates_on_its_own() -> None:
    assert timing.fold_samples(100, "t2", fold=0, n_folds=4) == (75, 25)
    assert timing.fold_samples(100, "t1", fold=3, n_folds=4) == (75, 25)
    assert timing.fold_samples(100, "t2", fold=-1, n_folds=4) == (100, 0)  # the final model: every study, no validation
    # an axial preset has a sample per study and level with an assigned slice: 9,610 of them in 1,975 studies
    assert timing.fold_samples(1975, "axial", fold=0, n_folds=4) == (9610 - 2402, 2402)


def test_training_drops_the_last_partial_batch_and_validation_keeps_it() -> None:
    assert [timing.train_steps(n, 32) for n in (0, 10, 32, 33, 75, 1481)] == [0, 1, 1, 1, 2, 46]
    assert [timing.eval_batches(n, 32) for n in (0, 25, 32, 65)] == [0, 1, 1, 3]


def test_hours_are_epochs_times_steps_times_ms_plus_validation() -> None:
    cfg = preset("sp1")  # 40 epochs, batch 32
    times = timing.StepTimes(train_ms=100.0, eval_ms=30.0)
    per_epoch_ms = 2 * 100.0 + 1 * 30.0  # 75 training samples: 2 steps; 25 validation samples: 1 batch
    assert timing.fold_hours(cfg, times, 100, 0, 4) == pytest.approx(40 * per_epoch_ms / 3.6e6)
    assert timing.recipe_hours(cfg, times, 100, [0, 1, 2, 3], 4) == pytest.approx(4 * 40 * per_epoch_ms / 3.6e6)
    assert timing.recipe_hours(cfg, times, 100, [-1], 4) == pytest.approx(40 * 3 * 100.0 / 3.6e6)  # 100 // 32 steps
    quick = dataclasses.replace(cfg, fast_dev_run=True)
    assert timing.fold_hours(quick, times, 100, 0, 4) == pytest.approx(per_epoch_ms / 3.6e6)


def test_the_competition_recipe_of_one_preset() -> None:
    # 1,975 studies, fold 0: 1,481 training studies, 46 steps of 32; 494 validation studies, 16 batches
    cfg = preset("fo")  # 32 epochs
    hours = timing.recipe_hours(cfg, timing.StepTimes(273.0, 90.0), timing.COMPETITION_STUDIES, [0, 1, 2, 3], 4)
    assert hours == pytest.approx(4 * 32 * (46 * 273.0 + 16 * 90.0) / 3.6e6)
