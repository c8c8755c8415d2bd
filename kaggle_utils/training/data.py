"""Datasets for both stages: read the frames of cached uint8 arrays, build masks and targets.

Datasets only read each sample's frames from the cached arrays, in their layout (``(N, H, W)``, or ``(5, N, H, W)``
for crops), straight into a row of the batch (``frames.read_frames``, ``loader.BatchLoader``); the tasks augment on
the device, in batches (``augment.py``).
The one augmentation done here is the sequence flip, because it also swaps left and right labels.
"""

from __future__ import annotations

import abc
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kaggle_utils.core.constants import IGNORE_INDEX, LEVEL_NAMES, LEVEL_SLUGS, SEVERITY_COLUMNS, row_id
from kaggle_utils.core.labels import condition_rows, left_right_pairs_of, level_slug
from kaggle_utils.core.paths import STAGE2, Paths
from kaggle_utils.io.frames import array_shape, read_frames
from kaggle_utils.io.tables import series_points
from kaggle_utils.preprocessing.axial_samples import SIDES, points_by_level


def one_hot_targets(labels: np.ndarray) -> np.ndarray:
    """Class indices (any shape) -> one-hot float rows, all three entries ``IGNORE_INDEX`` where missing."""
    labels = np.asarray(labels)
    out = np.eye(3, dtype=np.float32)[np.clip(labels, 0, 2)]
    out[labels == IGNORE_INDEX] = IGNORE_INDEX
    return out


def soft_targets(table: pd.DataFrame, rows: tuple[str, ...]) -> dict[int, np.ndarray]:
    """Per study (5, R, 3) soft targets from a long table (``study_id, row_id`` + the three probabilities, e.g. the
    pseudo labels of ``denoise.pseudo_table``); rows the table lacks are ``IGNORE_INDEX``."""
    by_row = dict(zip(table["row_id"], table[list(SEVERITY_COLUMNS)].to_numpy(np.float32), strict=True))
    ignored = np.full(len(SEVERITY_COLUMNS), IGNORE_INDEX, np.float32)
    return {
        int(study): np.stack(
            [np.stack([by_row.get(row_id(int(study), f"{r}_{level}"), ignored) for r in rows]) for level in LEVEL_SLUGS]
        )
        for study in table["study_id"].unique()
    }


class _ArrayDataset(Dataset, abc.ABC):
    """What both datasets share: the batch loader's protocol (``image_shape``, ``fill``) and single samples."""

    n_frames: int
    _shape: tuple[int, ...] | None = None

    @abc.abstractmethod
    def _path(self, index: int) -> Path:
        """The cached array of a sample (for training, of its first series)."""

    def image_shape(self) -> tuple[int, ...]:
        """The image of one sample: the cached shape with ``n_frames`` slices."""
        if self._shape is None:
            *lead, _, height, width = array_shape(self._path(0))
            self._shape = (*lead, self.n_frames, height, width)
        return self._shape

    @abc.abstractmethod
    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        """Write sample ``index``'s image into ``image``; return its other entries (random choices from ``rng``)."""

    def __getitem__(self, index: int) -> dict:
        """One sample as tensors (the batch loader calls ``fill`` instead)."""
        image = np.empty(self.image_shape(), np.uint8)
        sample = self.fill(index, image, np.random.default_rng(random.getrandbits(64)))
        return {"image": torch.from_numpy(image), **{k: _tensor(v) for k, v in sample.items()}}


def _tensor(value: object) -> object:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


class KeypointDataset(_ArrayDataset):
    """Stage 1: one sample per sagittal series: its middle frames and its 10 keypoints.

    A sample is ``image`` (F, 256, 256) uint8, ``mask`` (F,) bool, ``target`` (10, 2) relative (x, y) with the
    points of each level ordered by x, ``study_id``, ``series_id``. Without a keypoint table (inference)
    the target is zeros.
    """

    def __init__(
        self,
        series: pd.DataFrame,
        paths: Paths,
        n_frames: int,
        keypoints: pd.DataFrame | None = None,
        train: bool = False,
        flip: bool = True,
    ) -> None:
        self.series = series[["study_id", "series_id"]].to_numpy()
        self.paths, self.n_frames, self.train = paths, n_frames, train
        self.flip = train and flip  # the random sequence flip of training
        self.targets = [
            (series_points(keypoints, s) if keypoints is not None else np.zeros((10, 2))).reshape(-1, 2)
            for s in self.series[:, 1]
        ]

    def __len__(self) -> int:
        return len(self.series)

    def _path(self, index: int) -> Path:
        study_id, series_id = (int(v) for v in self.series[index])
        return self.paths.stage1_array(study_id, series_id)

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        # Keypoints are 2-D (they live on the middle slices), so reversing the slices keeps the targets.
        mask = read_frames(self._path(index), self.n_frames, image, reverse=self.flip and rng.random() < 0.5)
        study_id, series_id = (int(v) for v in self.series[index])
        target = self.targets[index].astype(np.float32)
        return {"mask": mask, "target": target, "study_id": study_id, "series_id": series_id}


class LevelKeypointDataset(_ArrayDataset):
    """Stage 1 of a view localised per level (axial): one sample per assigned (series, level) slice, its stack's
    middle frames and the level's points (``axial_levels.keypoints_table``).

    A sample is as ``KeypointDataset``'s, with ``level_index`` (into ``LEVEL_NAMES``) beside ``series_id``; the target
    is (2, 2): the left, then the right point, and ``point_mask`` (2,) bool says which were labelled (a side estimated
    from the other, ``labelled`` False in the table, is left out of the loss; its target is the image centre). Without
    points (inference) the target is zeros.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        paths: Paths,
        n_frames: int,
        keypoints: pd.DataFrame | None = None,
        train: bool = False,
        flip: bool = True,
    ) -> None:
        self.samples = samples[["study_id", "series_id", "level", "instance_number"]].drop_duplicates()
        self.samples = self.samples.reset_index(drop=True)
        self.records = [
            (int(r.study_id), int(r.series_id), r.level, int(r.instance_number)) for r in self.samples.itertuples()
        ]
        self.paths, self.n_frames, self.train = paths, n_frames, train
        self.flip = train and flip
        points = points_by_level(keypoints, labelled_only=True) if keypoints is not None else {}
        self.targets = [points.get((series_id, level), np.zeros((2, 2))) for _, series_id, level, _ in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, index: int) -> Path:
        study_id, series_id, level, instance = self.records[index]
        return self.paths.axial_stack(study_id, series_id, level_slug(level), instance)

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        # Reversing axial slices runs them upwards: the points stay where they are and keep their sides.
        mask = read_frames(self._path(index), self.n_frames, image, reverse=self.flip and rng.random() < 0.5)
        study_id, series_id, level, _ = self.records[index]
        target = self.targets[index].astype(np.float32)
        known = ~np.isnan(target).any(axis=1)
        return {
            "mask": mask,
            "target": np.where(known[:, None], target, 0.5).astype(np.float32),
            "point_mask": known,
            "study_id": study_id,
            "series_id": series_id,
            "level_index": LEVEL_NAMES.index(level),
        }


class CropDataset(_ArrayDataset):
    """Stage 2: per-level crop sequences of a series and the labels of the conditions the view shows.

    Training draws one record per study and picks one of its series at random on every access; evaluation
    has one record per series. A sample is ``image`` (5, F, 256, 256) uint8, ``mask`` (F,) bool, ``target``
    (5, R, 3) one-hot (``IGNORE_INDEX`` rows where missing) for the condition rows ``rows``; with a ``pseudo``
    table (``soft_targets``) also ``pseudo`` (5, R, 3), flipped with the labels. With ``error_roots`` (training),
    a sample reads, with probability ``error_p``, one of its series' crop sets with stage-1 error (``stage1_error``).
    """

    def __init__(
        self,
        series: pd.DataFrame,
        paths: Paths,
        n_frames: int,
        rows: tuple[str, ...],
        targets: pd.DataFrame | None = None,
        train: bool = False,
        root: str = STAGE2,
        flip: bool = True,
        pseudo: pd.DataFrame | None = None,
        swap_sides: bool = True,
        error_roots: tuple[str, ...] = (),
        error_p: float = 0.0,
    ) -> None:
        self.paths, self.n_frames, self.rows, self.train, self.root = paths, n_frames, rows, train, root
        self.error_roots, self.error_p = (error_roots, error_p) if train else ((), 0.0)
        self.flip = train and flip  # the random sequence flip (with the left/right label swap) of training
        groups = series.groupby("study_id")["series_id"].apply(list)
        if train:
            self.records = [(int(study), [int(s) for s in ids]) for study, ids in groups.items()]
        else:
            self.records = [(int(study), [int(s)]) for study, ids in groups.items() for s in ids]
        self.labels = self._labels(targets)
        self.pseudo = soft_targets(pseudo, rows) if pseudo is not None else None
        # Reversing a sagittal series mirrors the patient: its left and right labels swap (View.flip_swaps_sides).
        self.flip_pairs = left_right_pairs_of(rows) if swap_sides else ()

    def _labels(self, targets: pd.DataFrame | None) -> dict[int, np.ndarray]:
        columns = [f"{row}_{level}" for level in LEVEL_SLUGS for row in self.rows]
        if targets is None:
            return {}
        table = targets.set_index("study_id")[columns]
        return {
            int(s): one_hot_targets(v.reshape(len(LEVEL_SLUGS), len(self.rows)))
            for s, v in zip(table.index, table.to_numpy(), strict=True)
        }

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, index: int, series_id: int | None = None) -> Path:
        study_id, series_ids = self.records[index]
        return self.paths.stage2_array(study_id, series_ids[0] if series_id is None else series_id, self.root)

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        study_id, series_ids = self.records[index]
        series_id = series_ids[rng.integers(len(series_ids))] if self.train else series_ids[0]
        flip = self.flip and rng.random() < 0.5
        path = self._path(index, series_id)
        if self.error_roots and rng.random() < self.error_p:
            drawn = self.paths.stage2_array(study_id, series_id, self.error_roots[rng.integers(len(self.error_roots))])
            path = drawn if drawn.exists() else path  # a series that failed to cut keeps its ground-truth crops
        mask = read_frames(path, self.n_frames, image, reverse=flip)
        shape = (len(LEVEL_SLUGS), len(self.rows), 3)
        unlabelled = np.full(shape, IGNORE_INDEX, np.float32)  # a study without labels teaches nothing
        targets = {"target": self.labels.get(study_id, unlabelled).copy()}
        if self.pseudo is not None:
            targets["pseudo"] = self.pseudo.get(study_id, unlabelled).copy()
        if flip:
            # Index 0 is the patient's left: reversing the slices mirrors the patient, so left and right swap.
            for target in targets.values():
                for left, right in self.flip_pairs:
                    target[:, [left, right]] = target[:, [right, left]]
        return {"mask": mask, **targets, "study_id": study_id, "series_id": series_id}


class AxialCropDataset(_ArrayDataset):
    """Stage 2 of the axial view: one sample per assigned (series, level) slice with cached crops
    (``axial_crops.cache_stacks``): its three crop sequences and the level's labels.

    Training draws one record per study and level and picks one of the series imaging it at random on every access (a
    level two series image is one sample, as a study is for the sagittal presets); evaluation has one record per
    series and level. A sample is
    ``image`` (3, F, S, S) uint8 (canal, left recess, mirrored right recess), ``mask`` (F,) bool, ``target`` (1, 3, 3)
    one-hot (the rows of ``labels.CONDITION_ROWS["axial"]``: spinal, left and right subarticular), ``study_id``,
    ``series_id`` and ``level`` (index into ``LEVEL_SLUGS``); with a ``pseudo`` table (``soft_targets``) also ``pseudo``
    (1, 3, 3), flipped with the labels. The label of a side whose point was estimated (``labelled`` False in the
    samples: its recess crop is placed by mirroring the other point) is ignored. Training flips a level horizontally
    with probability 1/2:
    the canal crop mirrored, the two recess crops and their labels swapped (each recess crop is already on the left
    side of its image); reversing the slices is free (it keeps the sides).
    """

    rows = condition_rows("axial")

    def __init__(
        self,
        samples: pd.DataFrame,
        paths: Paths,
        n_frames: int,
        targets: pd.DataFrame | None = None,
        train: bool = False,
        flip: bool = True,
        pseudo: pd.DataFrame | None = None,
    ) -> None:
        self.paths, self.n_frames, self.train = paths, n_frames, train
        self.flip = train and flip
        self.pseudo = soft_targets(pseudo, self.rows) if pseudo is not None else None
        kept = samples[["study_id", "series_id", "level", "instance_number"]].drop_duplicates()
        keys = ["study_id", "level"] if train else ["study_id", "series_id", "level"]
        self.records = [
            (int(study_id), level, [(int(r.series_id), int(r.instance_number)) for r in group.itertuples()])
            for (study_id, *_, level), group in kept.groupby(keys, sort=True)
        ]
        self.labels = self._labels(targets)
        guessed = samples[~samples["labelled"].astype(bool)] if "labelled" in samples else samples.iloc[:0]
        self.estimated: dict[tuple[int, str], list[int]] = {}
        for r in guessed.itertuples():  # the row of that side in ``rows``: 1 left, 2 right
            self.estimated.setdefault((int(r.series_id), r.level), []).append(1 + list(SIDES).index(r.side))

    def _labels(self, targets: pd.DataFrame | None) -> dict[tuple[int, str], np.ndarray]:
        if targets is None:
            return {}
        table = targets.set_index("study_id")
        labels = {}
        for level_name, level in zip(LEVEL_NAMES, LEVEL_SLUGS, strict=True):
            values = table[[f"{row}_{level}" for row in self.rows]].to_numpy()
            for study_id, row in zip(table.index, values, strict=True):
                labels[int(study_id), level_name] = one_hot_targets(row)[None]
        return labels

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, index: int, choice: int = 0) -> Path:
        study_id, level, stacks = self.records[index]
        series_id, instance = stacks[choice]
        return self.paths.axial_crops(study_id, series_id, level_slug(level), instance)

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        study_id, level, stacks = self.records[index]
        choice = int(rng.integers(len(stacks))) if self.train else 0
        mask = read_frames(self._path(index, choice), self.n_frames, image, reverse=self.flip and rng.random() < 0.5)
        unlabelled = np.full((1, len(self.rows), 3), IGNORE_INDEX, np.float32)
        targets = {"target": self.labels.get((study_id, level), unlabelled).copy()}
        targets["target"][:, self.estimated.get((stacks[choice][0], level), [])] = IGNORE_INDEX
        if self.pseudo is not None:
            per_level = self.pseudo.get(study_id)
            targets["pseudo"] = unlabelled.copy() if per_level is None else per_level[[LEVEL_NAMES.index(level)]]
        if self.flip and rng.random() < 0.5:
            image[0] = image[0, ..., ::-1].copy()
            image[[1, 2]] = image[[2, 1]]
            for target in targets.values():
                target[:, [1, 2]] = target[:, [2, 1]]
        return {
            "mask": mask,
            **targets,
            "study_id": study_id,
            "series_id": stacks[choice][0],
            "level_index": LEVEL_NAMES.index(level),
        }
