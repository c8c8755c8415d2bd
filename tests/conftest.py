"""Shared fixtures: one tiny synthetic dataset in the competition layout, and its preprocessed work folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.paths import Paths
from kaggle_utils.dev.synthetic import make_dataset
from kaggle_utils.io import tables
from kaggle_utils.preprocessing import axial_crops, cache

TINY_TRAIN, TINY_TEST = 8, 2


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training and 2 test studies (every fold of 4 has 2 validation studies); 10 % of the training labels are
    flipped (``label_flips.csv``), so notebook 05 has flips to find."""
    return make_dataset(
        tmp_path_factory.mktemp("competition"),
        n_train=TINY_TRAIN,
        n_test=TINY_TEST,
        seed=1,
        workers=1,
        progress=False,
        label_noise=0.1,
    )


@pytest.fixture(scope="session")
def prepared(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """``tiny_data`` after 01: the training tables, stage-1 volumes and stage-2 crops in a work folder, and the axial
    level table, localiser samples and their stacks."""
    paths = Paths(data_dir=tiny_data, work_dir=tmp_path_factory.mktemp("work"))
    cfg = PreprocessConfig(num_workers=1)
    built = tables.build_training_tables(paths, cfg)
    jobs = cache.plan_jobs(paths, built["series"], tables.points_by_series(built["keypoints"]), cfg)
    assert not cache.run_jobs(jobs, cfg)
    assert not axial_crops.prepare_training(paths, built["series"], built["keypoints"], cfg, progress=False).problems
    return paths
