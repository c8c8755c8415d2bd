"""Datasets for both stages: read cached uint8 arrays, pick frames, build masks and targets.

Loaders only read arrays (memory-mapped) and return uint8 tensors; augmentation happens later on the
device, in batches (``augment.py``). The one augmentation done here is the sequence flip, because it
also swaps left and right labels.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kaggle_utils.constants import IGNORE_INDEX, LEVELS, SEVERITY_COLUMNS, row_id
from kaggle_utils.models import left_right_pairs_of
from kaggle_utils.paths import Paths
from kaggle_utils.tables import series_points


def select_frames(n_total: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the middle ``n_frames`` of ``n_total`` slices (-1 marks padding) and the validity mask.

    With fewer slices than frames the series is padded symmetrically (the extra pad on the right).
    """
    if n_total >= n_frames:
        start = (n_total - n_frames) // 2
        return np.arange(start, start + n_frames), np.ones(n_frames, bool)
    left = (n_frames - n_total) // 2
    indices = np.full(n_frames, -1)
    indices[left : left + n_total] = np.arange(n_total)
    return indices, indices >= 0


def take_frames(array: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The middle frames of an array whose last axis is the slice axis, moved to the front, zero-padded."""
    indices, mask = select_frames(array.shape[-1], n_frames)
    frames = np.zeros((n_frames, *array.shape[:-1]), np.uint8)
    valid = indices[mask]
    frames[mask] = np.moveaxis(np.asarray(array[..., valid]), -1, 0)
    return frames, mask


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
            [np.stack([by_row.get(row_id(int(study), f"{r}_{level}"), ignored) for r in rows]) for level in LEVELS]
        )
        for study in table["study_id"].unique()
    }


def seed_worker(worker_id: int) -> None:
    """Give every loader worker its own python RNG stream (torch seeds only its own generator)."""
    random.seed(torch.initial_seed() % 2**32)


class KeypointDataset(Dataset):
    """Stage 1: one sample per sagittal series: its middle frames and its 10 keypoints.

    Returns ``image`` (F, 256, 256) uint8, ``mask`` (F,) bool, ``target`` (10, 2) relative (x, y) with the
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
            series_points(keypoints, s).reshape(-1, 2) if keypoints is not None else np.zeros((10, 2))
            for s in self.series[:, 1]
        ]

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> dict:
        study_id, series_id = (int(v) for v in self.series[index])
        volume = np.load(self.paths.stage1_array(study_id, series_id), mmap_mode="r")
        frames, mask = take_frames(volume, self.n_frames)
        if self.flip and random.random() < 0.5:
            # Keypoints are 2-D (they live on the middle slices), so reversing the slices keeps the targets.
            frames, mask = frames[::-1].copy(), mask[::-1].copy()
        return {
            "image": torch.from_numpy(frames),
            "mask": torch.from_numpy(mask),
            "target": torch.tensor(self.targets[index], dtype=torch.float32),
            "study_id": study_id,
            "series_id": series_id,
        }


class CropDataset(Dataset):
    """Stage 2: per-level crop sequences of a series and the labels of the conditions the plane shows.

    Training draws one record per study and picks one of its series at random on every access; evaluation
    has one record per series. Returns ``image`` (5, F, 256, 256) uint8, ``mask`` (F,) bool, ``target``
    (5, R, 3) one-hot (``IGNORE_INDEX`` rows where missing) for the condition rows ``rows``; with a ``pseudo``
    table (``soft_targets``) also ``pseudo`` (5, R, 3), flipped with the labels.
    """

    def __init__(
        self,
        series: pd.DataFrame,
        paths: Paths,
        n_frames: int,
        rows: tuple[str, ...],
        targets: pd.DataFrame | None = None,
        train: bool = False,
        root: str = "stage2",
        flip: bool = True,
        pseudo: pd.DataFrame | None = None,
    ) -> None:
        self.paths, self.n_frames, self.rows, self.train, self.root = paths, n_frames, rows, train, root
        self.flip = train and flip  # the random sequence flip (with the left/right label swap) of training
        groups = series.groupby("study_id")["series_id"].apply(list)
        if train:
            self.records = [(int(study), [int(s) for s in ids]) for study, ids in groups.items()]
        else:
            self.records = [(int(study), [int(s)]) for study, ids in groups.items() for s in ids]
        self.labels = self._labels(targets)
        self.pseudo = soft_targets(pseudo, rows) if pseudo is not None else None
        self.flip_pairs = left_right_pairs_of(rows)

    def _labels(self, targets: pd.DataFrame | None) -> dict[int, np.ndarray]:
        columns = [f"{row}_{level}" for level in LEVELS for row in self.rows]
        if targets is None:
            return {}
        table = targets.set_index("study_id")[columns]
        return {
            int(s): one_hot_targets(v.reshape(len(LEVELS), len(self.rows)))
            for s, v in zip(table.index, table.to_numpy(), strict=True)
        }

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        study_id, series_ids = self.records[index]
        series_id = random.choice(series_ids) if self.train else series_ids[0]
        crops = np.load(self.paths.stage2_array(study_id, series_id, self.root), mmap_mode="r")  # (H, W, 5, N)
        frames, mask = take_frames(crops, self.n_frames)  # (F, H, W, 5)
        frames = np.ascontiguousarray(frames.transpose(3, 0, 1, 2))  # (5, F, H, W)
        shape = (len(LEVELS), len(self.rows), 3)
        targets = {"target": self.labels.get(study_id, np.zeros(shape, np.float32)).copy()}
        if self.pseudo is not None:
            targets["pseudo"] = self.pseudo.get(study_id, np.full(shape, IGNORE_INDEX, np.float32)).copy()
        if self.flip and random.random() < 0.5:
            # Index 0 is the patient's left: reversing the slices mirrors the patient, so left and right swap.
            frames, mask = frames[:, ::-1].copy(), mask[::-1].copy()
            for target in targets.values():
                for left, right in self.flip_pairs:
                    target[:, [left, right]] = target[:, [right, left]]
        return {
            "image": torch.from_numpy(frames),
            "mask": torch.from_numpy(mask),
            **{key: torch.from_numpy(value) for key, value in targets.items()},
            "study_id": study_id,
            "series_id": series_id,
        }
