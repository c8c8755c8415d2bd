"""Shared fixtures: one tiny synthetic dataset in the competition layout for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_utils.synthetic import make_dataset

TINY_TRAIN, TINY_TEST = 8, 2


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training and 2 test studies (every fold of 4 has 2 validation studies)."""
    return make_dataset(
        tmp_path_factory.mktemp("competition"), n_train=TINY_TRAIN, n_test=TINY_TEST, seed=1, workers=1, progress=False
    )
