"""Cached arrays of the real shapes for the training benchmarks: what preprocessing writes, filled with noise.

``bench_train`` and ``preflight`` time the loader and the training step on these, so their figures include reading
the arrays as training reads them, without a dataset or a preprocessing run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kaggle_utils.core.config import PreprocessConfig, TrainConfig
from kaggle_utils.core.constants import LABEL_COLUMNS, LEVEL_NAMES, LEVEL_SLUGS
from kaggle_utils.core.labels import condition_rows, level_slug
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.views import view_named
from kaggle_utils.preprocessing.axial_crops import CROPS
from kaggle_utils.training.data import AxialCropDataset, CropDataset, KeypointDataset, LevelKeypointDataset
from kaggle_utils.training.loader import to_device
from kaggle_utils.training.train import loader

CACHED_SLICES = 17  # slices per cached sagittal series: about what the competition's series have


@dataclass(frozen=True)
class CachedArrays:
    """Stage-1 volumes and stage-2 crops of one T1 and one T2 series per study, and the five level stacks and crops
    of one axial series, in a work folder.

    The first ``distinct`` studies get arrays of their own; the others are hard links to them (a copy where the
    file system has no links), so an epoch of many batches costs the disk only ``distinct`` studies.
    """

    paths: Paths
    series: pd.DataFrame

    @classmethod
    def write(cls, work_dir: Path, n_studies: int, n_slices: int, seed: int = 0, distinct: int = 64) -> CachedArrays:
        paths = Paths(data_dir=work_dir, work_dir=work_dir)
        rng = np.random.default_rng(seed)
        rows = []
        for study in range(1, n_studies + 1):
            twin = (study - 1) % distinct + 1  # the study whose arrays this one shares
            for view, offset in (("t1", 0), ("t2", 1)):
                series, twin_series = 10 * study + offset, 10 * twin + offset
                volume, crops = paths.stage1_array(study, series), paths.stage2_array(study, series)
                for path in (volume, crops):
                    path.parent.mkdir(parents=True, exist_ok=True)
                if study == twin:
                    slices = rng.integers(0, 256, (n_slices, 256, 256), dtype=np.uint8)
                    np.save(volume, slices)
                    np.save(crops, np.repeat(slices[None], len(LEVEL_SLUGS), axis=0))
                else:
                    _link(paths.stage1_array(twin, twin_series), volume)
                    _link(paths.stage2_array(twin, twin_series), crops)
                rows.append({"study_id": study, "series_id": series, "view": view})
            axial_series = 10 * study + 2
            for level in LEVEL_NAMES:
                key = (level_slug(level), AXIAL_INSTANCE)
                stack, crops = (path(study, axial_series, *key) for path in (paths.axial_stack, paths.axial_crops))
                for path in (stack, crops):
                    path.parent.mkdir(parents=True, exist_ok=True)
                if study == twin:
                    slices = rng.integers(0, 256, (PreprocessConfig().axial_stack_slices, 256, 256), dtype=np.uint8)
                    np.save(stack, slices)
                    np.save(crops, np.repeat(slices[None], len(CROPS), axis=0))
                else:
                    _link(paths.axial_stack(twin, 10 * twin + 2, *key), stack)
                    _link(paths.axial_crops(twin, 10 * twin + 2, *key), crops)
                rows.append({"study_id": study, "series_id": axial_series, "view": "axial", "level": level})
        return cls(paths, pd.DataFrame(rows))

    def training_set(self, cfg: TrainConfig) -> torch.utils.data.Dataset:
        """The preset's training dataset over these arrays (random labels for stage 2, zero keypoints)."""
        series = self.series[self.series["view"] == cfg.view]
        studies = series["study_id"].unique()
        labels = np.random.default_rng(1).integers(0, 3, (len(studies), len(LABEL_COLUMNS)))
        targets = pd.DataFrame(labels, columns=list(LABEL_COLUMNS)).assign(study_id=studies)
        if view_named(cfg.view).localised_per == "level":
            samples = series.assign(instance_number=AXIAL_INSTANCE)
            if cfg.stage == 1:
                return LevelKeypointDataset(samples, self.paths, cfg.n_frames, keypoints=None, train=True)
            return AxialCropDataset(samples, self.paths, cfg.n_frames, targets, train=True)
        if cfg.stage == 1:
            return KeypointDataset(series, self.paths, cfg.n_frames, keypoints=None, train=True)
        return CropDataset(series, self.paths, cfg.n_frames, condition_rows(cfg.condition), targets, train=True)

    def first_batch(self, cfg: TrainConfig, device: torch.device) -> dict:
        batch = next(iter(loader(self.training_set(cfg), cfg, train=True)))
        return to_device(batch, device)


AXIAL_INSTANCE = 1
"""The instance number in the names of the benchmark's axial stacks (any one: the arrays are random)."""


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
