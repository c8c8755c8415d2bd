"""The synthetic dataset: exact competition layout, determinism, and pathology visible at its keypoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from kaggle_utils.core.constants import (
    AXIAL_T2,
    CONDITION_FAMILIES,
    CONDITION_TITLES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVEL_SLUGS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    condition_family,
    row_id,
)
from kaggle_utils.core.paths import (
    COORDS_V7_CSV,
    LABEL_FLIPS_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
)
from kaggle_utils.dev.synthetic import flip_labels, make_dataset
from kaggle_utils.dev.synthetic.acquisition import _instance_numbers, axial_coverage
from kaggle_utils.io.dicom import read_series

N_TRAIN, N_TEST, SEED = 3, 2, 0
SPINAL, FORAMINAL, SUBARTICULAR = CONDITION_FAMILIES
SERIES_OF_FAMILY = {SPINAL: SAGITTAL_T2, FORAMINAL: SAGITTAL_T1, SUBARTICULAR: AXIAL_T2}  # where readers click
CSV_FILES = (
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    COORDS_V7_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    return make_dataset(out, n_train=N_TRAIN, n_test=N_TEST, seed=SEED, workers=2, progress=False)


def _csv(data_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(data_dir / name)


def test_label_tables(data_dir: Path) -> None:
    for name, n_studies in ((TRAIN_CSV, N_TRAIN), (TEST_LABELS_CSV, N_TEST)):
        labels = _csv(data_dir, name)
        assert list(labels.columns) == ["study_id", *LABEL_COLUMNS]
        assert len(labels) == n_studies and labels.study_id.is_unique
        values = labels[list(LABEL_COLUMNS)].stack().dropna()
        assert set(values) <= set(SEVERITIES)
    ids = pd.concat([_csv(data_dir, TRAIN_CSV).study_id, _csv(data_dir, TEST_LABELS_CSV).study_id])
    assert ids.is_unique and ids.astype(str).str.len().between(7, 10).all()


def test_series_tables_and_image_folders(data_dir: Path) -> None:
    for name, split in ((TRAIN_SERIES_CSV, "train"), (TEST_SERIES_CSV, "test")):
        series = _csv(data_dir, name)
        assert list(series.columns) == ["study_id", "series_id", "series_description"]
        assert series.series_id.is_unique
        for _, descriptions in series.groupby("study_id").series_description:
            assert sorted(descriptions.drop_duplicates()) in (sorted(SERIES_DESCRIPTIONS), [SAGITTAL_T1, SAGITTAL_T2])
            assert (descriptions != AXIAL_T2).sum() == 2 and (descriptions == AXIAL_T2).sum() <= 3
        for row in series.itertuples():
            files = sorted((data_dir / f"{split}_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            assert all(f.stem == str(h.InstanceNumber) for f, h in zip(files, headers, strict=True))
            if row.series_description != AXIAL_T2:  # axial numbering: test_axial_series_have_blocks_and_numbering
                assert len(files) >= 15
                assert sorted(int(h.InstanceNumber) for h in headers) == list(range(1, len(files) + 1))
            assert {h.SeriesDescription for h in headers} == {row.series_description}
            assert len({h.SeriesInstanceUID for h in headers}) == 1
            assert {h.Modality for h in headers} == {"MR"} and {h.PatientID for h in headers} == {str(row.study_id)}
    assert set(_csv(data_dir, TEST_SERIES_CSV).study_id) == set(_csv(data_dir, TEST_LABELS_CSV).study_id)


def test_dicom_files_are_valid_part10_mr_images(data_dir: Path) -> None:
    first = next((data_dir / "train_images").rglob("*.dcm"))
    ds = pydicom.dcmread(first)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 16) and ds.PixelRepresentation == 0
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.max() > 0
    assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
    assert float(ds.SliceThickness) > 0 and float(ds.SpacingBetweenSlices) > 0


def test_label_coordinates_sit_on_the_right_series_inside_the_image(data_dir: Path) -> None:
    coords = _csv(data_dir, TRAIN_COORDINATES_CSV)
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    labels = _csv(data_dir, TRAIN_CSV).set_index("study_id")
    assert len(coords) == labels.notna().sum().sum()  # one point per labelled cell
    assert set(coords.condition) <= set(CONDITION_TITLES.values()) and set(coords.level) <= set(LEVEL_NAMES)
    series = _csv(data_dir, TRAIN_SERIES_CSV).set_index("series_id")
    condition_of_title = {title: c for c, title in CONDITION_TITLES.items()}
    for row in coords.itertuples():
        condition = condition_of_title[row.condition]
        column = f"{condition}_{LEVEL_SLUGS[LEVEL_NAMES.index(row.level)]}"
        assert pd.notna(labels.loc[row.study_id, column])
        assert series.loc[row.series_id, "series_description"] == SERIES_OF_FAMILY[condition_family(condition)]
        path = data_dir / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert 0 <= row.x < header.Columns and 0 <= row.y < header.Rows


def test_coords_v7_has_ten_points_per_sagittal_series(data_dir: Path) -> None:
    corrected = _csv(data_dir, COORDS_V7_CSV)
    assert list(corrected.columns) == ["study_id", "series_id", "level", "side", "relative_x", "relative_y"]
    series = _csv(data_dir, TRAIN_SERIES_CSV)
    sagittal = series[series.series_description.isin([SAGITTAL_T1, SAGITTAL_T2])]
    assert set(corrected.series_id) == set(sagittal.series_id)
    assert (corrected.groupby("series_id").size() == 2 * len(LEVEL_SLUGS)).all()
    assert set(corrected.side) == {"L", "R"} and set(corrected.level) == set(LEVEL_NAMES)
    assert corrected.relative_x.between(0, 1).all() and corrected.relative_y.between(0, 1).all()
    # On the T2, "R" is the back of the disc: further posterior, i.e. larger x (columns run front to back).
    t2 = corrected[corrected.series_id.isin(series.series_id[series.series_description == SAGITTAL_T2])]
    front_back = t2.pivot_table(index=["series_id", "level"], columns="side", values="relative_x")
    assert (front_back.R > front_back.L).all()


def test_sample_submission(data_dir: Path) -> None:
    submission = _csv(data_dir, SAMPLE_SUBMISSION_CSV)
    assert list(submission.columns) == ["row_id", *SEVERITY_COLUMNS]
    studies = _csv(data_dir, TEST_LABELS_CSV).study_id
    assert submission.row_id.tolist() == [row_id(s, c) for s in studies for c in LABEL_COLUMNS]
    np.testing.assert_allclose(submission[list(SEVERITY_COLUMNS)].to_numpy(), 1 / 3)


def test_same_seed_same_bytes_whatever_workers_and_size(data_dir: Path, tmp_path: Path) -> None:
    """Study i depends only on (seed, i): a smaller serial run reproduces the first studies exactly."""
    n_train = 2
    small = make_dataset(tmp_path, n_train=n_train, n_test=0, seed=SEED, workers=1, progress=False)
    for name in CSV_FILES:
        small_lines = (small / name).read_text().splitlines()
        full_lines = (data_dir / name).read_text().splitlines()
        assert small_lines == full_lines[: len(small_lines)], name
    assert len((small / TRAIN_CSV).read_text().splitlines()) == n_train + 1
    dicoms = sorted(p.relative_to(small) for p in small.rglob("*.dcm"))
    assert len(dicoms) > 0
    for relative in dicoms:
        assert (small / relative).read_bytes() == (data_dir / relative).read_bytes(), relative


def test_missing_series_fraction_drops_one_sagittal_series(tmp_path: Path) -> None:
    out = make_dataset(tmp_path, n_train=0, n_test=1, seed=3, workers=1, progress=False, missing_series_fraction=1.0)
    series = _csv(out, TEST_SERIES_CSV)
    assert series.series_description.isin([SAGITTAL_T1, SAGITTAL_T2]).sum() == 1
    written = {p.name for p in (out / "test_images" / str(series.study_id[0])).iterdir()}
    assert written == {str(s) for s in series.series_id}
    assert len(_csv(out, SAMPLE_SUBMISSION_CSV)) == len(LABEL_COLUMNS)


def _box_means(data_dir: Path, condition: str, half_mm: float) -> dict[str, list[float]]:
    """Mean signal in a small box around each keypoint of a condition, over the series' 99th percentile."""
    coords = _csv(data_dir, TRAIN_COORDINATES_CSV)
    coords = coords[coords.condition == CONDITION_TITLES[condition]]
    labels = _csv(data_dir, TRAIN_CSV).set_index("study_id")
    means: dict[str, list[float]] = {severity: [] for severity in SEVERITIES}
    for (study_id, series_id), points in coords.groupby(["study_id", "series_id"]):
        series = read_series(data_dir / "train_images" / str(study_id) / str(series_id))
        top = np.percentile(np.concatenate([s.ravel() for s in series.slices]), 99)
        for row in points.itertuples():
            k = int(np.flatnonzero(series.instance_numbers == row.instance_number)[0])
            half_row, half_col = np.round(half_mm / series.pixel_spacing[k]).astype(int)
            x, y = round(row.x), round(row.y)
            box = series.slices[k][y - half_row : y + half_row + 1, x - half_col : x + half_col + 1]
            severity = labels.loc[study_id, f"{condition}_{LEVEL_SLUGS[LEVEL_NAMES.index(row.level)]}"]
            means[severity].append(float(box.mean() / top))
    return means


def test_severe_spinal_stenosis_is_visible_at_its_keypoint(data_dir: Path) -> None:
    """CSF is the brightest thing on T2: a severely narrowed canal behind the disc is much darker."""
    means = _box_means(data_dir, CONDITIONS[0], half_mm=3.0)
    normal, severe = means[SEVERITIES[0]], means[SEVERITIES[2]]
    assert normal and severe, "seed 0 should hold both a normal and a severe spinal level"
    assert max(severe) < 0.6 * min(normal)
    assert all(min(normal) > m > max(severe) for m in means[SEVERITIES[1]])


def test_severe_foraminal_narrowing_is_visible_at_its_keypoint(data_dir: Path) -> None:
    """Foraminal fat is bright on T1: a narrowed foramen, filled with fibrous tissue, is dark."""
    means = {s: [] for s in SEVERITIES}
    for condition in (CONDITIONS[1], CONDITIONS[2]):
        for severity, values in _box_means(data_dir, condition, half_mm=2.5).items():
            means[severity] += values
    normal, severe = means[SEVERITIES[0]], means[SEVERITIES[2]]
    assert normal and severe
    assert max(severe) < 0.6 * min(normal)


def test_severe_subarticular_stenosis_is_visible_at_its_axial_keypoint(data_dir: Path) -> None:
    """CSF fills a normal lateral recess (bright on T2); a severely stenosed one is filled with soft tissue."""
    means = {s: [] for s in SEVERITIES}
    for condition in (CONDITIONS[3], CONDITIONS[4]):
        for severity, values in _box_means(data_dir, condition, half_mm=1.5).items():
            means[severity] += values
    normal, moderate, severe = (means[s] for s in SEVERITIES)
    assert normal and moderate and severe, "seed 0 should hold every subarticular severity"
    assert max(severe) < 0.6 * min(normal)
    assert np.mean(severe) < np.mean(moderate) < np.mean(normal)


def test_axial_coverage_is_drawn_like_the_competition_data() -> None:
    """Mostly one series, sometimes two or three, a few studies none; upper levels sometimes uncovered; with
    two series each (level, side) point is carried by exactly one of them."""
    rng = np.random.default_rng(0)
    draws = [axial_coverage(rng) for _ in range(3000)]
    counts = np.bincount([len(d) for d in draws], minlength=4) / len(draws)
    assert counts[1] > 0.75 and 0.1 < counts[2] < 0.2 and 0 < counts[3] < 0.03 and 0 < counts[0] < 0.06
    covered = [set().union(*(c.levels for c in d)) for d in draws if d]
    assert 0.04 < np.mean([0 not in levels for levels in covered]) < 0.13
    assert all({2, 3, 4} <= levels for levels in covered)  # only the upper levels (L1/L2, L2/L3) go uncovered
    for d in draws:
        carried = [(lv, side) for c in d for lv, sides in c.sides.items() for side in sides]
        assert len(carried) == len(set(carried))  # never labelled twice
        assert all(lv in c.levels for c in d for lv in c.sides)  # a series carries points of its own levels only
    one_side = [d for d in draws if len(d) == 2 and all(len(s) == 1 for c in d for s in c.sides.values())]
    assert one_side and all(d[0].levels == d[1].levels for d in one_side)


def test_axial_series_have_blocks_and_numbering_as_scanners_write_them(data_dir: Path) -> None:
    """Per-disc blocks or one stack; instance numbers unique, sometimes counting upwards or skipping."""
    series = _csv(data_dir, TRAIN_SERIES_CSV)
    axial = series[series.series_description == AXIAL_T2]
    assert len(axial) >= N_TRAIN - 1
    for row in axial.itertuples():
        folder = data_dir / "train_images" / str(row.study_id) / str(row.series_id)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
        numbers = [int(h.InstanceNumber) for h in headers]
        assert len(set(numbers)) == len(numbers) >= 3
    rng = np.random.default_rng(1)
    numberings = [_instance_numbers(rng, 30) for _ in range(500)]
    assert 0.06 < np.mean([n[0] > n[-1] for n in numberings]) < 0.2  # counting upwards (usually caudally)
    assert 0.05 < np.mean([np.abs(np.diff(n)).max() > 1 for n in numberings]) < 0.3
    assert all(len(set(n)) == 30 for n in numberings)


def test_label_noise_flips_exactly_the_stated_fraction_and_lists_the_flips(data_dir: Path, tmp_path: Path) -> None:
    """The same studies as the clean dataset, with round(fraction x labelled cells) labels changed; images untouched."""
    noisy = make_dataset(tmp_path, n_train=N_TRAIN, n_test=0, seed=SEED, workers=1, progress=False, label_noise=0.2)
    clean_labels = _csv(data_dir, TRAIN_CSV).set_index("study_id")
    noisy_labels = _csv(noisy, TRAIN_CSV).set_index("study_id")
    assert (noisy / TRAIN_CSV).read_text().splitlines()[0] == (data_dir / TRAIN_CSV).read_text().splitlines()[0]
    labelled = int(clean_labels.notna().sum().sum())
    changed = (clean_labels != noisy_labels) & clean_labels.notna()
    assert int(changed.sum().sum()) == round(0.2 * labelled)
    assert noisy_labels.isna().equals(clean_labels.isna())  # missing cells stay missing
    flips = _csv(noisy, LABEL_FLIPS_CSV)
    assert list(flips.columns) == ["study_id", "row_id", "condition", "level", "true", "given"]
    assert len(flips) == round(0.2 * labelled) and flips.row_id.is_unique
    for flip in flips.itertuples():
        column = f"{flip.condition}_{flip.level}"
        assert flip.row_id == row_id(flip.study_id, column) and changed.at[flip.study_id, column]
        assert (clean_labels.at[flip.study_id, column], noisy_labels.at[flip.study_id, column]) == (
            flip.true,
            flip.given,
        )
        assert flip.true != flip.given
    for relative in sorted(p.relative_to(noisy) for p in noisy.rglob("*.dcm"))[::25]:
        assert (noisy / relative).read_bytes() == (data_dir / relative).read_bytes(), relative
    assert not (data_dir / LABEL_FLIPS_CSV).exists()  # no noise, no flips file


def test_flip_labels_draws_among_labelled_cells_only() -> None:
    labels = pd.DataFrame({"study_id": [1, 2], **{c: [SEVERITIES[0], None] for c in LABEL_COLUMNS}})
    noisy, flips = flip_labels(labels, 1.0, np.random.default_rng(0))
    assert len(flips) == len(LABEL_COLUMNS) and set(flips.study_id) == {1}
    assert (
        set(noisy.loc[0, list(LABEL_COLUMNS)]) <= set(SEVERITIES[1:]) and noisy.loc[1, list(LABEL_COLUMNS)].isna().all()
    )
    with pytest.raises(ValueError, match="label_noise"):
        make_dataset(Path("unused"), n_train=1, label_noise=1.5)


def _axial_headers(data_dir: Path, study_id: int) -> dict[int, list[pydicom.Dataset]]:
    series = _csv(data_dir, TRAIN_SERIES_CSV)
    axial = series[(series.study_id == study_id) & (series.series_description == AXIAL_T2)]
    folder = data_dir / "train_images" / str(study_id)
    return {
        int(s): [pydicom.dcmread(p, stop_before_pixels=True) for p in (folder / str(s)).glob("*.dcm")]
        for s in axial.series_id
    }


def test_first_study_has_two_axial_passes_with_one_side_on_each(data_dir: Path) -> None:
    study = int(_csv(data_dir, TRAIN_CSV).study_id.iloc[0])
    assert len(_axial_headers(data_dir, study)) == 2
    coords = _csv(data_dir, TRAIN_COORDINATES_CSV)
    subarticular = coords[(coords.study_id == study) & coords.condition.str.contains("Subarticular")]
    sides_per_series = subarticular.groupby("series_id").condition.nunique()
    assert len(sides_per_series) == 2 and (sides_per_series == 1).all()
    levels = subarticular.groupby("series_id")["level"].apply(frozenset)
    assert len(levels.iloc[0] & levels.iloc[1]) >= 3  # both passes image the same levels (a grade may be missing)


def test_second_study_has_parallel_upper_slabs_a_disc_apart(data_dir: Path) -> None:
    """Two slabs with one ImageOrientationPatient, their slices far further apart across the gap than inside."""
    study = int(_csv(data_dir, TRAIN_CSV).study_id.iloc[1])
    (headers,) = _axial_headers(data_dir, study).values()
    groups: dict[tuple, list[float]] = {}
    for h in headers:
        iop = np.asarray(h.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        groups.setdefault(tuple(iop), []).append(float(np.asarray(h.ImagePositionPatient, dtype=float) @ normal))
    gaps = [np.diff(np.sort(heights)) for heights in groups.values() if len(heights) > 2]
    assert any(g.max() > 3 * np.median(g) for g in gaps)


def test_third_study_has_a_localiser_as_first_instance_of_its_sagittal_t2(data_dir: Path) -> None:
    series = _csv(data_dir, TRAIN_SERIES_CSV)
    study = int(_csv(data_dir, TRAIN_CSV).study_id.iloc[2])
    (t2,) = series[(series.study_id == study) & (series.series_description == SAGITTAL_T2)].series_id
    folder = data_dir / "train_images" / str(study) / str(t2)
    first = pydicom.dcmread(folder / "1.dcm", stop_before_pixels=True)
    normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, dtype=float), (2, 3)))
    assert np.argmax(np.abs(normal)) != 0  # not sagittal: coronal or axial
    loaded = read_series(folder)
    assert loaded.n_slices == len(list(folder.glob("*.dcm"))) - 1 and len(loaded.dropped) == 1
    coords = _csv(data_dir, TRAIN_COORDINATES_CSV)
    assert (coords[coords.series_id == t2].instance_number > 1).all()  # no point is clicked on the localiser
