"""Axial T2 series: blocks and their order, level assignment against hand-made geometry, and the axial
localiser's samples and stacks."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from kaggle_utils.core import labels
from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.constants import LEVEL_NAMES
from kaggle_utils.core.paths import TRAIN_COORDINATES_CSV, Paths
from kaggle_utils.evaluation import viz
from kaggle_utils.io import tables
from kaggle_utils.io.dicom import Geometry, read_slice
from kaggle_utils.io.tables import load_table
from kaggle_utils.preprocessing import axial_crops, axial_levels, axial_samples
from kaggle_utils.preprocessing.intensity import intensity_window, resize_slice, to_uint8

SPACING = 0.5  # mm per pixel
SIZE = 200  # pixels: a 100 mm field of view centred on x = y = 0
FLAT = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # rows to patient left, columns posterior: normal +z


def tilted(degrees: float) -> np.ndarray:
    """An axial orientation turned about the left-right axis (its normal leans forwards or backwards)."""
    a = np.deg2rad(degrees)
    return np.array([1.0, 0.0, 0.0, 0.0, np.cos(a), np.sin(a)])


def slice_at(centre: np.ndarray, iop: np.ndarray) -> np.ndarray:
    """ImagePositionPatient that puts the image centre at ``centre``."""
    half = (SIZE - 1) / 2 * SPACING
    return np.asarray(centre, float) - half * iop[:3] - half * iop[3:]


def geometry(centres: list, orientations: list, instances: list) -> Geometry:
    n = len(centres)
    return Geometry(
        positions=np.array([slice_at(c, o) for c, o in zip(centres, orientations, strict=True)]),
        orientations=np.array(orientations, dtype=float),
        pixel_spacing=np.full((n, 2), SPACING),
        shapes=np.full((n, 2), SIZE),
        instance_numbers=np.array(instances),
        files=tuple(Path(f"{i}.dcm") for i in instances),
    )


def stack(heights: list[float], iop: np.ndarray = FLAT, first: int = 1) -> Geometry:
    return geometry([[0.0, 0.0, h] for h in heights], [iop] * len(heights), list(range(first, first + len(heights))))


def points_at(heights: list[float], y: float = 0.0) -> np.ndarray:
    return np.array([[0.0, y, h] for h in heights])


def test_blocks_are_ordered_top_to_bottom_whatever_the_files_and_instance_numbers_say() -> None:
    # Two discs, each imaged by three slices angled along it; files listed shuffled, instances counting upwards.
    upper = [([0, 0, 40 + dz], tilted(8)) for dz in (4, 0, -4)]
    lower = [([0, 0, dz], tilted(-12)) for dz in (4, 0, -4)]
    slices = [*upper, *lower]
    instances = [6, 5, 4, 3, 2, 1]
    shuffle = [4, 1, 5, 0, 3, 2]
    g = geometry([slices[i][0] for i in shuffle], [slices[i][1] for i in shuffle], [instances[i] for i in shuffle])
    series = axial_levels.split_blocks(7, g)
    assert series.block.tolist() == [0, 0, 0, 1, 1, 1]
    assert series.index.tolist() == [0, 1, 2, 0, 1, 2]
    assert series.instance_numbers.tolist() == [6, 5, 4, 3, 2, 1]  # top to bottom, not by instance number
    assert series.geometry.files[0] == Path("6.dcm")
    np.testing.assert_allclose(series.normals[3], [0.0, np.sin(np.deg2rad(12)), np.cos(np.deg2rad(12))], atol=1e-9)


def test_parallel_slabs_a_disc_apart_are_two_blocks_and_a_stack_never_crosses_the_gap() -> None:
    """One orientation, two slabs of three slices 4 mm apart, 30 mm between them: two blocks, and the bottom slice
    of the upper slab repeats itself rather than borrow the lower slab's top slice."""
    series = axial_levels.split_blocks(1, stack([44.0, 40.0, 36.0, 6.0, 2.0, -2.0]))
    assert series.block.tolist() == [0, 0, 0, 1, 1, 1] and series.index.tolist() == [0, 1, 2, 0, 1, 2]
    table = axial_levels.level_table(1, points_at([36.0, 6.0]), [series], max_distance_mm=3.0)
    assert axial_levels.stack_instances(table, 1, 3, PreprocessConfig()) == [1, 2, 3, 3, 3]


def test_orientations_are_grouped_by_angle_not_by_rounded_cosines() -> None:
    """Cosines straddling a rounding step (0.1235 +- 1e-5) are one orientation; 1 degree apart are two."""
    a = np.array([1.0, 0.0, 0.0, 0.0, np.sqrt(1 - 0.12349**2), 0.12349])
    b = np.array([1.0, 0.0, 0.0, 0.0, np.sqrt(1 - 0.12351**2), 0.12351])
    assert axial_levels.orientation_groups(np.stack([a, b, a])).tolist() == [0, 0, 0]
    assert axial_levels.orientation_groups(np.stack([tilted(7.0), tilted(8.0), tilted(7.2)])).tolist() == [0, 1, 0]
    series = axial_levels.split_blocks(1, geometry([[0, 0, h] for h in (8.0, 4.0, 0.0)], [a, b, a], [1, 2, 3]))
    assert series.block.tolist() == [0, 0, 0] and series.instance_numbers.tolist() == [1, 2, 3]


def test_non_axial_images_are_dropped_and_named() -> None:
    coronal = np.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    g = geometry([[0, 0, 4], [0, 0, 0], [0, 0, 2]], [FLAT, FLAT, coronal], [1, 2, 99])
    series = axial_levels.axial_from_geometry(3, g)
    assert series is not None and series.instance_numbers.tolist() == [1, 2]
    assert series.geometry.dropped == ("99.dcm: an image in the coronal plane among axial slices",)
    assert axial_levels.axial_from_geometry(3, geometry([[0, 0, 0]], [coronal], [1])) is None


def test_signed_distance_uses_each_blocks_own_normal() -> None:
    series = axial_levels.split_blocks(1, geometry([[0, 0, 0]], [tilted(30)], [1]))
    point = np.array([0.0, 10.0, 0.0])  # 10 mm behind the slice centre, in the axial plane of a flat slice
    # The tilted slice's normal is row x column = (0, -sin 30, cos 30): the point lies 10 sin 30 = 5 mm below it.
    np.testing.assert_allclose(series.signed_distances(point), [-5.0])


def test_nearest_slice_within_reach_is_assigned_and_gaps_and_uncovered_levels_are_not() -> None:
    # Slices every 4 mm from z = 0 down to -40, the one at -20 missing (a gap in the series).
    heights = [-4.0 * k for k in range(11) if k != 5]
    series = axial_levels.split_blocks(5, stack(heights, first=10))
    points = points_at([-8.5, -20.0, 30.0, -36.0, -39.0])
    points[3, 0] = 80.0  # 80 mm to the left: it projects outside the 100 mm wide image
    matches = axial_levels.match_levels(points, series, max_distance_mm=3.0)
    assert [m.assigned for m in matches] == [True, False, False, False, True]
    assert series.instance_numbers[matches[0].slice] == 12 and matches[0].distance_mm == pytest.approx(-0.5)
    assert abs(matches[1].distance_mm) == pytest.approx(4.0)  # the gap: nearest slices 4 mm away either side
    assert matches[4].xy == pytest.approx(((SIZE - 1) / 2, (SIZE - 1) / 2))
    looser = axial_levels.match_levels(points, series, max_distance_mm=5.0)  # inference reaches further
    assert [m.assigned for m in looser] == [True, True, False, False, True]


def test_level_table_marks_one_slice_per_covered_level_in_every_series() -> None:
    upper = axial_levels.split_blocks(1, stack([40.0, 36.0, 32.0, 28.0, 24.0, 20.0]))
    lower = axial_levels.split_blocks(2, stack([22.0, 18.0, 14.0, 10.0, 6.0, 2.0]))
    points = points_at([36.5, 21.0, 10.0, -30.0, -60.0])
    table = axial_levels.level_table(9, points, [upper, lower], max_distance_mm=3.0)
    assert list(table.columns) == [*tables.SCHEMAS["axial_levels"], "rows", "columns", "row_mm", "column_mm"]
    assigned = table[table.assigned]
    by_series = assigned.groupby("series_id")["level"].apply(list).to_dict()
    assert by_series == {1: ["L1/L2", "L2/L3"], 2: ["L2/L3", "L3/L4"]}  # L2/L3 is in both series
    assert assigned.set_index(["series_id", "level"])["instance_number"].to_dict() == {
        (1, "L1/L2"): 2,
        (1, "L2/L3"): 6,
        (2, "L2/L3"): 1,
        (2, "L3/L4"): 4,
    }
    assert len(table) == 12 and set(table.level) <= set(LEVEL_NAMES)
    assert table.loc[(table.series_id == 1) & (table.instance_number == 1), "distance_mm"].item() == pytest.approx(-3.5)


def test_sagittal_points_are_placed_on_the_middle_slice() -> None:
    sagittal_iop = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])  # rows posterior, columns down: normal +x (left)
    xs = [-8.0, -4.0, 0.0, 4.0, 8.0]
    g = Geometry(
        positions=np.array([[x, -50.0, 50.0] for x in xs]),
        orientations=np.tile(sagittal_iop, (5, 1)),
        pixel_spacing=np.full((5, 2), 0.5),
        shapes=np.full((5, 2), 200),
        instance_numbers=np.array([5, 4, 3, 2, 1]),
        files=tuple(Path(f"{i}.dcm") for i in range(5)),
    )
    keypoints = np.zeros((5, 2, 2))
    keypoints[:, 1] = [[0.5, 0.1 * (k + 1)] for k in range(5)]  # the back-of-disc points, relative x, y
    world = axial_levels.sagittal_level_points(keypoints, g)
    expected = [[0.0, -50.0 + 0.5 * 200 * 0.5, 50.0 - 0.1 * (k + 1) * 200 * 0.5] for k in range(5)]
    np.testing.assert_allclose(world, expected)


def test_the_back_of_the_disc_is_the_point_with_the_larger_patient_y() -> None:
    """On a sagittal series whose rows run forwards, the point with the smaller image x is the posterior one."""
    forwards = np.array([0.0, -1.0, 0.0, 0.0, 0.0, -1.0])  # rows anterior, columns down
    g = Geometry(
        positions=np.array([[x, 50.0, 50.0] for x in (-4.0, 0.0, 4.0)]),
        orientations=np.tile(forwards, (3, 1)),
        pixel_spacing=np.full((3, 2), 0.5),
        shapes=np.full((3, 2), 200),
        instance_numbers=np.array([1, 2, 3]),
    )
    keypoints = np.array([[[0.3, 0.1 * (k + 1)], [0.7, 0.1 * (k + 1)]] for k in range(5)])  # ordered by image x
    world = axial_levels.sagittal_level_points(keypoints, g)
    np.testing.assert_allclose(world[:, 1], 50.0 - 0.3 * 200 * 0.5)  # the smaller x: 30 mm in front of y = 50


def test_synthetic_levels_land_on_the_labelled_axial_slices(tiny_data: Path, prepared: Paths) -> None:
    """From the ground-truth Sagittal T2 keypoints, each labelled subarticular point's series has that level
    assigned within one slice of where the reader clicked; studies without the T2 keypoints are counted."""
    series, keypoints = tables.load_table(prepared, "series"), tables.load_table(prepared, "keypoints")
    table, coverage = axial_levels.build_level_table(prepared, "train", series, keypoints, 3.0, progress=False)
    coords = pd.read_csv(tiny_data / TRAIN_COORDINATES_CSV)
    clicked = coords[coords.condition.str.contains("Subarticular")]
    assigned = table[table.assigned]
    merged = clicked.merge(assigned, on=["study_id", "series_id", "level"], suffixes=("", "_assigned"))
    assert len(merged) == len(clicked)  # every labelled point's level found on its series
    gaps = merged.groupby(["study_id", "series_id", "level"]).apply(
        lambda g: (g.instance_number - g.instance_number_assigned).abs().min(), include_groups=False
    )
    assert (gaps <= 1).all()
    assert coverage.studies == series.study_id.nunique() and coverage.levels_assigned > 0

    without_t2 = keypoints[keypoints.view == "t1"]
    _, none = axial_levels.build_level_table(prepared, "train", series, without_t2, 3.0, progress=False)
    assert len(none.without_sagittal_t2) == none.studies and none.levels_assigned == 0


def test_stack_instances_repeat_the_ends_of_the_block() -> None:
    levels = pd.DataFrame(
        {
            "series_id": 1,
            "instance_number": [9, 8, 7, 3, 2],
            "block": [0, 0, 0, 1, 1],
            "index": [0, 1, 2, 0, 1],
        }
    )
    assert axial_levels.stack_instances(levels, 1, 8, PreprocessConfig()) == [9, 9, 8, 7, 7]
    assert axial_levels.stack_instances(levels, 1, 3, PreprocessConfig()) == [
        3,
        3,
        3,
        2,
        2,
    ]  # instance 7 belongs to another block


def test_localiser_samples_pair_both_points_on_the_assigned_slice(prepared: Paths) -> None:
    samples = tables.load_table(prepared, "axial_keypoints")
    levels = tables.load_table(prepared, "axial_levels")
    assert len(samples) > 0 and samples[["relative_x", "relative_y"]].stack().between(0, 1).all()
    sides = samples.groupby(["series_id", "level"])["side"].apply(lambda s: "".join(sorted(s)))
    assert (sides == "LR").all()
    by_side = samples.pivot_table(index=["series_id", "level"], columns="side", values="relative_x")
    assert (by_side["L"] > by_side["R"]).all()  # patient left on the image's right (rows run to patient left)
    assigned = levels[levels["assigned"]].set_index(["series_id", "level"])["instance_number"]
    keyed = samples.set_index(["series_id", "level"])["instance_number"]
    assert (keyed == assigned.reindex(keyed.index)).all()


def test_a_stack_is_the_assigned_slice_between_its_block_neighbours(prepared: Paths) -> None:
    levels = tables.load_table(prepared, "axial_levels")
    sample = tables.load_table(prepared, "axial_keypoints").iloc[0]
    instance = int(sample.instance_number)
    stack = np.load(prepared.axial_stack(sample.study_id, sample.series_id, labels.level_slug(sample.level), instance))
    assert stack.shape == (PreprocessConfig().axial_stack_slices, 256, 256) and stack.dtype == np.uint8
    instances = axial_levels.stack_instances(levels, int(sample.series_id), instance, PreprocessConfig())
    assert instances[PreprocessConfig().axial_stack_slices // 2] == instance
    folder = prepared.series_dir("train", int(sample.study_id), int(sample.series_id))
    slices = {i: read_slice(folder / f"{i}.dcm") for i in set(instances)}
    window = intensity_window([slices[i] for i in instances], PreprocessConfig().percentiles)  # the stack's own
    np.testing.assert_array_equal(stack[2], to_uint8(resize_slice(slices[instance], 256), window))


def test_level_crops_centre_on_the_canal_and_each_recess_and_mirror_the_right_one() -> None:
    """A marker 4 px to the patient's left of each point: right of centre in the left crop, left of centre in the
    mirrored right crop (the two recesses then face the same way)."""
    image = np.zeros((200, 200), np.float32)
    left, right = np.array([130.0, 100.0]), np.array([70.0, 100.0])  # patient left is the image's right
    for point in (left, right):
        image[100, int(point[0]) + 4] = 100.0
    points = np.stack([left / 200, right / 200])
    spacing = np.array([0.5, 0.5])  # 40 mm side crops are 80 px: size 80 keeps the pixels
    crops = axial_crops.level_crops([image] * 3, points, spacing, (0.0, 100.0), PreprocessConfig(img_size=80))
    assert crops.shape == (3, 3, 80, 80) and crops.dtype == np.uint8
    profile = {name: crops[k, 1].max(axis=0) for k, name in enumerate(axial_crops.CROPS)}
    centre_of_80 = 39.5
    assert np.flatnonzero(profile["left"]).mean() == pytest.approx(centre_of_80 + 4, abs=0.6)
    assert np.flatnonzero(profile["right"]).mean() == pytest.approx(centre_of_80 - 4, abs=0.6)
    # the centre crop (60 mm = 120 px, shown at 80) holds both markers, either side of the canal
    assert (profile["centre"] > 0).sum() >= 2


def test_each_slice_is_cropped_with_its_own_size_and_spacing() -> None:
    """A neighbour with twice the matrix at half the spacing (the same field of view) gives the same crops."""
    coarse = np.zeros((200, 200), np.float32)
    coarse[96:104, 126:134] = 100.0  # a 4 mm square at the left point (130, 100) of a 0.5 mm slice
    fine = cv2.resize(coarse, (400, 400), interpolation=cv2.INTER_NEAREST)
    points = np.array([[130.0, 100.0], [70.0, 100.0]]) / 200
    spacing = np.array([[0.5, 0.5], [0.25, 0.25], [0.5, 0.5]])
    cfg = PreprocessConfig(img_size=80)
    crops = axial_crops.level_crops([coarse, fine, coarse], points, spacing, (0.0, 100.0), cfg)
    assert np.abs(crops[:, 1].astype(int) - crops[:, 0].astype(int)).mean() < 2


def test_training_crops_are_cut_from_the_true_points(prepared: Paths) -> None:
    levels = tables.load_table(prepared, "axial_levels")
    samples = tables.load_table(prepared, "axial_keypoints")
    sample = samples.iloc[0]
    key = (int(sample.study_id), int(sample.series_id), labels.level_slug(sample.level), int(sample.instance_number))
    crops = np.load(prepared.axial_crops(*key))
    assert (
        crops.shape == (len(axial_crops.CROPS), PreprocessConfig().axial_stack_slices, 256, 256)
        and crops.dtype == np.uint8
    )
    instances = axial_levels.stack_instances(levels, key[1], key[3], PreprocessConfig())
    folder = prepared.series_dir("train", key[0], key[1])
    stack = [read_slice(folder / f"{i}.dcm") for i in instances]
    row = levels[(levels.series_id == key[1]) & (levels.instance_number == key[3])].iloc[0]
    points = axial_samples.points_by_level(samples)[key[1], sample.level]
    window = intensity_window(stack, PreprocessConfig().percentiles)
    spacing = axial_crops.slice_spacings(levels[levels.series_id == key[1]], instances)
    np.testing.assert_array_equal(spacing[len(spacing) // 2], [row.row_mm, row.column_mm])
    expected = axial_crops.level_crops(stack, points, spacing, window, PreprocessConfig())
    np.testing.assert_array_equal(crops, expected)


def test_the_level_picture_puts_the_true_and_the_predicted_points_on_the_slices_that_show_them(prepared) -> None:
    samples = load_table(prepared, "axial_keypoints")
    study_id = int(samples["study_id"].iloc[0])
    series, keypoints = load_table(prepared, "series"), load_table(prepared, "keypoints")
    # a prediction one pixel-share to the right of the truth, on the same slices
    predicted = samples[samples["study_id"] == study_id].pivot_table(
        index=["study_id", "series_id", "level", "instance_number"], columns="side", values=["relative_x", "relative_y"]
    )
    predicted = pd.DataFrame(
        {
            "left_x": predicted["relative_x"]["L"] + 0.01,
            "left_y": predicted["relative_y"]["L"],
            "right_x": predicted["relative_x"]["R"] + 0.01,
            "right_y": predicted["relative_y"]["R"],
        }
    ).reset_index()
    picture = viz.level_picture(prepared, "train", study_id, series, keypoints, 3.0, samples, predicted)
    assert picture.true_points and picture.true_points.keys() == picture.predicted_points.keys()
    for level, true in picture.true_points.items():
        image = picture.slices[level][0]
        np.testing.assert_allclose(picture.predicted_points[level] - true, [[0.01 * image.shape[1], 0]] * 2, atol=1e-6)
    plt.close(viz.axial_levels_figure(picture))
