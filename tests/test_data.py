"""The datasets' samples: the device layout, the sequence flip, targets and pseudo targets."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch

from kaggle_utils.core.constants import (
    FORAMINAL_CONDITIONS,
    IGNORE_INDEX,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVEL_SLUGS,
    SEVERITY_COLUMNS,
    row_id,
)
from kaggle_utils.core.devices import device_images
from kaggle_utils.core.labels import condition_rows, left_right_pairs_of, level_slug
from kaggle_utils.core.paths import Paths
from kaggle_utils.io.tables import load_table
from kaggle_utils.training.data import (
    AxialCropDataset,
    CropDataset,
    LevelKeypointDataset,
    one_hot_targets,
    soft_targets,
)


def test_device_images_are_the_uint8_batch_scaled_to_unit_floats():
    image = torch.arange(2 * 3 * 6 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 6, 4, 5)  # (B, levels, F, H, W)
    moved = device_images(image, torch.device("cpu"))
    assert moved.dtype == torch.float32 and moved.shape == image.shape and moved.is_contiguous()
    assert torch.equal(moved, image.float() / 255)


def test_one_hot_targets_mark_missing_rows():
    out = one_hot_targets(np.array([[0, 2], [IGNORE_INDEX, 1]]))
    assert out.shape == (2, 2, 3)
    assert out[0, 1].tolist() == [0, 0, 1] and (out[1, 0] == IGNORE_INDEX).all()


class FixedDraws:
    """An rng whose draws are chosen: ``random()`` below 0.5 means flip."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value

    def integers(self, n: int) -> int:
        return 0


def test_the_sequence_flip_reverses_the_slices_and_swaps_left_and_right_labels(prepared):
    series = load_table(prepared, "series")
    series = series[series["view"] == "t2"]
    dataset = CropDataset(series, prepared, 6, condition_rows("all"), load_table(prepared, "targets"), train=True)
    plain_image, flipped_image = (np.empty(dataset.image_shape(), np.uint8) for _ in range(2))
    plain = dataset.fill(0, plain_image, FixedDraws(0.9))
    flipped = dataset.fill(0, flipped_image, FixedDraws(0.1))
    np.testing.assert_array_equal(flipped_image, plain_image[:, ::-1])  # (5, F, H, W)
    assert flipped["mask"].tolist() == plain["mask"][::-1].tolist()
    rows = condition_rows("all")
    for left, right in left_right_pairs_of(rows):
        np.testing.assert_array_equal(flipped["target"][:, left], plain["target"][:, right])
    spinal = [i for i, r in enumerate(rows) if r.startswith("spinal")]
    np.testing.assert_array_equal(flipped["target"][:, spinal], plain["target"][:, spinal])


def _crop_dataset(
    tmp_path, pseudo_values: dict[str, list[float]] | None, train: bool = True, **options: bool
) -> CropDataset:
    """One T1 study (foraminal rows: left Normal, right Severe) with a cached crop array of 3 distinct slices."""
    paths = Paths(tmp_path, tmp_path)
    array = np.zeros((5, 3, 8, 8), np.uint8)
    array[:, 0] = 10  # the patient's left slice
    paths.stage2_array(1, 2).parent.mkdir(parents=True)
    np.save(paths.stage2_array(1, 2), array)
    right = FORAMINAL_CONDITIONS[1]
    targets = pd.DataFrame({"study_id": [1], **{c: [2 if c.startswith(right) else 0] for c in LABEL_COLUMNS}})
    pseudo = None
    if pseudo_values is not None:
        pseudo = pd.DataFrame(
            [
                (1, row_id(1, f"{c}_{lv}"), *v) for c, v in pseudo_values.items() for lv in LEVEL_SLUGS[:4]
            ],  # L5/S1 absent
            columns=["study_id", "row_id", *SEVERITY_COLUMNS],
        )
    series = pd.DataFrame({"study_id": [1], "series_id": [2]})
    return CropDataset(series, paths, 3, FORAMINAL_CONDITIONS, targets, train=train, pseudo=pseudo, **options)


def test_pseudo_targets_follow_the_sequence_flip(tmp_path):
    left, right = FORAMINAL_CONDITIONS
    dataset = _crop_dataset(tmp_path, {left: [0.7, 0.2, 0.1], right: [0.1, 0.2, 0.7]})
    random.seed(0)
    flipped = set()
    for _ in range(20):
        sample = dataset[0]
        target, pseudo = sample["target"].numpy(), sample["pseudo"].numpy()
        assert pseudo.shape == target.shape == (5, 2, 3)
        is_flipped = bool(sample["image"][:, -1].max() == 10)  # the left slice went last
        flipped.add(is_flipped)
        sides = [1, 0] if is_flipped else [0, 1]
        np.testing.assert_array_equal(target[:, sides[0]], np.tile([1, 0, 0], (5, 1)))  # left Normal, wherever it is
        np.testing.assert_allclose(pseudo[:4, sides[0]], np.tile([0.7, 0.2, 0.1], (4, 1)))
        np.testing.assert_allclose(pseudo[:4, sides[1]], np.tile([0.1, 0.2, 0.7], (4, 1)))
        assert (pseudo[4] == IGNORE_INDEX).all()  # no pseudo label for L5/S1
    assert flipped == {True, False}


def test_a_view_whose_flip_does_not_mirror_the_patient_keeps_its_sides(tmp_path):
    dataset = _crop_dataset(tmp_path, None, swap_sides=False)
    random.seed(0)
    flipped = set()
    for _ in range(20):
        sample = dataset[0]
        flipped.add(bool(sample["image"][:, -1].max() == 10))
        np.testing.assert_array_equal(sample["target"].numpy()[:, 0], np.tile([1, 0, 0], (5, 1)))  # left stays left
    assert flipped == {True, False}


def test_without_a_pseudo_table_there_is_no_pseudo_key(tmp_path):
    assert "pseudo" not in _crop_dataset(tmp_path, None)[0]
    assert set(soft_targets(pd.DataFrame(columns=["study_id", "row_id", *SEVERITY_COLUMNS]), ("x",))) == set()


def test_a_study_without_labels_has_every_target_ignored(tmp_path):
    dataset = _crop_dataset(tmp_path, None)
    dataset.labels.clear()  # as for a study that train.csv lacks
    target = dataset[0]["target"].numpy()
    assert target.shape == (5, 2, 3) and (target == IGNORE_INDEX).all()


def test_a_level_sample_is_its_stacks_middle_frames_and_its_left_and_right_points(prepared):
    samples = load_table(prepared, "axial_keypoints")
    dataset = LevelKeypointDataset(samples, prepared, n_frames=3, keypoints=samples)
    assert len(dataset) == len(samples) // 2  # one sample per (series, level), two points each
    sample = dataset[0]
    first = dataset.samples.iloc[0]
    stack = np.load(
        prepared.axial_stack(first.study_id, first.series_id, level_slug(first.level), first.instance_number)
    )
    np.testing.assert_array_equal(sample["image"].numpy(), stack[1:4])  # the assigned slice and one either side
    assert sample["mask"].all() and sample["level_index"] == LEVEL_NAMES.index(first.level)
    rows = samples[(samples.series_id == first.series_id) & (samples.level == first.level)].set_index("side")
    np.testing.assert_allclose(sample["target"].numpy(), rows.loc[["L", "R"], ["relative_x", "relative_y"]], atol=1e-6)
    reversed_ = LevelKeypointDataset(samples, prepared, n_frames=3, keypoints=samples, train=True)
    flipped = [reversed_.fill(0, np.empty((3, 256, 256), np.uint8), np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(f["target"], sample["target"].numpy()) for f in flipped)  # slice order keeps sides


def test_an_axial_level_sample_is_its_three_crops_and_the_levels_three_labels(prepared):
    samples = load_table(prepared, "axial_keypoints")
    targets = load_table(prepared, "targets")
    dataset = AxialCropDataset(samples, prepared, n_frames=5, targets=targets)
    assert len(dataset) == len(samples) // 2  # evaluation: one sample per (series, level)
    sample = dataset[0]
    study_id, level, ((series_id, instance),) = dataset.records[0]
    crops = np.load(prepared.axial_crops(study_id, series_id, level_slug(level), instance))
    np.testing.assert_array_equal(sample["image"].numpy(), crops)  # (canal, left, mirrored right) x 5 slices
    labels = targets.set_index("study_id").loc[study_id, [f"{r}_{level_slug(level)}" for r in dataset.rows]]
    np.testing.assert_array_equal(sample["target"].numpy(), one_hot_targets(labels.to_numpy(int))[None])
    assert sample["level_index"] == LEVEL_NAMES.index(level) and sample["series_id"] == series_id

    # Training: as cut or with its slices reversed, and each of those flipped horizontally or not (the canal crop
    # mirrored, the recess crops and their labels swapped).
    training = AxialCropDataset(samples, prepared, n_frames=5, targets=targets, train=True)
    (training_index,) = [i for i, r in enumerate(training.records) if r[:2] == (study_id, level)]
    outcomes = {}
    for reverse in (False, True):
        for flip in (False, True):
            image, target = (crops[:, ::-1] if reverse else crops).copy(), sample["target"].numpy().copy()
            if flip:
                image = np.stack([image[0, ..., ::-1], image[2], image[1]])
                target = target[:, [0, 2, 1]]
            outcomes[reverse, flip] = (image, target)
    seen = set()
    for seed in range(16):
        image = np.empty((3, 5, 256, 256), np.uint8)
        drawn = training.fill(training_index, image, np.random.default_rng(seed))
        match = [
            k for k, (im, t) in outcomes.items() if np.array_equal(im, image) and np.array_equal(t, drawn["target"])
        ]
        assert match, f"draw {seed} is none of the four views"
        seen.update(match)
    assert {flip for _, flip in seen} == {False, True}
