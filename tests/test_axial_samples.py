"""The axial training samples: points carried through patient coordinates from whichever series they were clicked
on, far points left out and counted, points on an absent instance named, one-sided levels kept with the other side
estimated and masked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_axial import FLAT, geometry, stack, tilted

from kaggle_utils.core.constants import IGNORE_INDEX
from kaggle_utils.core.paths import TRAIN_COORDINATES_CSV, TRAIN_CSV, Paths
from kaggle_utils.io import tables
from kaggle_utils.models.losses import heatmap_divergence, keypoint_l1
from kaggle_utils.preprocessing import axial_levels, axial_samples
from kaggle_utils.training.data import AxialCropDataset, LevelKeypointDataset


def test_a_point_is_carried_onto_another_series_slice_through_patient_coordinates() -> None:
    """A point clicked on a tilted pass lands, on a flat pass's nearest slice, at the pixel of the same place."""
    flat = axial_levels.split_blocks(1, stack([8.0, 4.0, 0.0, -4.0]))
    lean = axial_levels.split_blocks(2, geometry([[0.0, 0.0, 1.0]], [tilted(5.0)], [7]))
    world = np.array([12.0, -6.0, 1.0 + -6.0 * np.sin(np.deg2rad(5.0)) / np.cos(np.deg2rad(5.0))])
    xy_lean = lean.pixel(0, world)
    k = int(np.argmin(np.abs(flat.signed_distances(world))))
    carried = axial_samples.carry_point(lean, 7, tuple(xy_lean), flat, k)
    np.testing.assert_allclose(carried, flat.pixel(k, world), atol=1e-6)


def test_a_point_more_than_two_slices_or_a_block_away_is_not_carried() -> None:
    two_blocks = geometry(
        [[0.0, 0.0, h] for h in (40.0, 36.0, 32.0, 28.0, 8.0, 4.0, 0.0)], [FLAT] * 4 + [tilted(8.0)] * 3, range(1, 8)
    )
    series = axial_levels.split_blocks(1, two_blocks)
    k = int(np.flatnonzero(series.instance_numbers == 1)[0])  # top of the upper block
    assert axial_samples.carry_point(series, 3, (100.0, 100.0), series, k) is not None  # two slices away
    assert axial_samples.carry_point(series, 4, (100.0, 100.0), series, k) is None  # three
    bottom = int(np.flatnonzero(series.block == 0)[-1])
    assert axial_samples.carry_point(series, 5, (100.0, 100.0), series, bottom) is None  # the next block's top
    near, far = (axial_levels.split_blocks(2, stack([40.0 - mm])) for mm in (9.0, 11.0))  # on another series
    assert axial_samples.carry_point(near, 1, (100.0, 100.0), series, k) is not None  # nearest slice 2 away
    assert axial_samples.carry_point(far, 1, (100.0, 100.0), series, k) is None  # nearest slice 3 away


def test_both_passes_give_samples_with_both_sides_carried(tiny_data: Path, prepared: Paths) -> None:
    """The first study has two axial passes, the left points on one and the right on the other: each pass's assigned
    levels are samples with both sides labelled, every point inside the image and the left on the image's right."""
    study = int(pd.read_csv(tiny_data / TRAIN_CSV).study_id.iloc[0])
    samples = tables.load_table(prepared, "axial_keypoints")
    mine = samples[samples.study_id == study]
    clicked = pd.read_csv(tiny_data / TRAIN_COORDINATES_CSV)
    clicked = clicked[(clicked.study_id == study) & clicked.condition.str.contains("Subarticular")]
    assert clicked.groupby("series_id").condition.nunique().eq(1).all()  # one side per series, as drawn
    both_clicked = clicked.groupby("level").size().loc[lambda n: n == 2].index
    assert mine.series_id.nunique() == 2 and mine[mine.level.isin(both_clicked)].labelled.all()
    assert set(mine.level) >= set(both_clicked)
    by_side = mine.pivot_table(index=["series_id", "level"], columns="side", values="relative_x")
    assert (by_side["L"] > by_side["R"]).all() and len(by_side) >= 2 * 3
    assert mine[["relative_x", "relative_y"]].stack().between(0, 1).all()
    checks = tables.load_table(prepared, "axial_checks").set_index("study_id")
    assert checks.loc[study, "samples"] == len(by_side)


def _first_level(prepared: Paths, condition: str) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """The level table, its first assigned level, and that level's clicks whose condition holds ``condition``."""
    levels = tables.load_table(prepared, "axial_levels")
    clicks = pd.read_csv(prepared.data_file(TRAIN_COORDINATES_CSV))
    row = levels[levels.assigned].iloc[0]
    mine = (clicks.study_id == row.study_id) & (clicks.level == row.level) & clicks.condition.str.contains(condition)
    return levels, row, clicks[mine].copy()


def test_a_one_sided_level_is_a_sample_with_the_other_side_mirrored(prepared: Paths) -> None:
    levels, row, level_clicks = _first_level(prepared, "Left Subarticular")
    table, checks = axial_samples.keypoints_table(prepared, levels[levels.index == row.name], clicks=level_clicks)
    assert list(table.side) == ["L", "R"] and list(table.labelled) == [True, False]
    left, right = table[["relative_x", "relative_y"]].to_numpy() * [row.columns, row.rows]
    np.testing.assert_allclose((left[0] + right[0]) / 2, row.point_x, atol=1e-6)  # mirrored through the canal point
    assert right[1] == left[1] and checks.totals()["one_sided"] == 1


def test_a_point_on_an_instance_its_series_lacks_is_named_not_counted_as_far(prepared: Paths) -> None:
    levels, row, level_clicks = _first_level(prepared, "Subarticular")
    level_clicks["instance_number"] = 9999  # no such file in the series
    table, checks = axial_samples.keypoints_table(prepared, levels[levels.index == row.name], clicks=level_clicks)
    assert table.empty and checks.totals()["far_points"] == 0 and checks.totals()["dropped"] == 1
    first = level_clicks.iloc[0]
    assert f"study {row.study_id} series {first.series_id} instance 9999" in checks.absent[0]
    assert f"{len(level_clicks)} labelled points left out because their series" in str(checks)


def test_a_missing_side_is_masked_in_the_localiser_loss() -> None:
    pred = torch.tensor([[[0.2, 0.2], [0.9, 0.9]]])
    target = torch.tensor([[[0.2, 0.2], [0.5, 0.5]]])
    known = torch.tensor([[True, False]])
    assert keypoint_l1(pred, target, known) == 0
    logits = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    masked = heatmap_divergence(logits, target, 4, 0.5, known)
    assert torch.isclose(masked, heatmap_divergence(logits[:, :1], target[:, :1], 4, 0.5))  # the known point's alone


def test_the_datasets_mask_an_estimated_side(prepared: Paths) -> None:
    samples = tables.load_table(prepared, "axial_keypoints").copy()
    first = samples.iloc[:2].index
    samples.loc[first[1], "labelled"] = False  # the first sample's right side estimated
    series_id, level = samples.loc[first[0], ["series_id", "level"]]
    localiser = LevelKeypointDataset(samples, prepared, 3, samples)
    index = next(i for i, r in enumerate(localiser.records) if (r[1], r[2]) == (series_id, level))
    item = localiser.fill(index, np.zeros(localiser.image_shape(), np.uint8), np.random.default_rng(0))
    assert item["point_mask"].tolist() == [True, False] and np.isfinite(item["target"]).all()
    crops = AxialCropDataset(samples, prepared, 5, tables.load_table(prepared, "targets"), train=False)
    index = next(i for i, r in enumerate(crops.records) if r[1] == level and r[2][0][0] == series_id)
    item = crops.fill(index, np.zeros(crops.image_shape(), np.uint8), np.random.default_rng(0))
    assert (item["target"][0, 2] == IGNORE_INDEX).all()
