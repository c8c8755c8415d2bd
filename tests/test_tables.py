"""Training tables: keypoints from the corrected files or the competition coordinates, the solution's folds."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.constants import CONDITION_TITLES, CONDITIONS, LEVEL_NAMES
from kaggle_utils.core.faults import FaultLog
from kaggle_utils.core.paths import (
    COORDS_IMPROVED_CSV,
    COORDS_V7_CSV,
    SOLUTION_METADATA_CSV,
    TRAIN_COORDINATES_CSV,
    Paths,
)
from kaggle_utils.io import competition, tables
from kaggle_utils.io.dicom import Turn
from kaggle_utils.io.point_gaps import estimated_series
from kaggle_utils.preprocessing import axial_crops


def _canal_rows(points: np.ndarray) -> pd.DataFrame:
    """Spinal canal coordinates (pixels) of one T2 series, one row per level."""
    title = CONDITION_TITLES[CONDITIONS[0]]
    return pd.DataFrame({"condition": title, "level": LEVEL_NAMES[: len(points)], "x": points[:, 0], "y": points[:, 1]})


def _fronts_and_backs(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = tables._series_points(_canal_rows(points), "t2", Turn(100, 100), study_id=1, series_id=2)
    xy = np.array([(r[5], r[6]) for r in rows]) * 100
    return xy[0::2], xy[1::2]  # "L" (front) and "R" (canal) rows alternate


def test_an_upright_spine_gets_its_front_points_straight_ahead() -> None:
    canal = np.c_[np.full(5, 60.0), np.arange(5) * 10.0 + 20]
    front, back = _fronts_and_backs(canal)
    assert np.allclose(back, canal)
    assert np.allclose(front, canal - [9.0, 0.0])  # 0.9 level spacings to the front (smaller x)


def test_a_tilted_spine_gets_disc_lines_square_to_it() -> None:
    angle = np.radians(30)
    along = np.array([np.sin(angle), np.cos(angle)])  # down the image, leaning to the back
    canal = 50 + np.arange(5)[:, None] * 10.0 * along
    front, back = _fronts_and_backs(canal)
    disc = front - back
    assert np.allclose(np.linalg.norm(disc, axis=1), 9.0)
    assert np.allclose(disc @ along, 0.0, atol=1e-9) and (disc[:, 0] < 0).all()


def test_without_the_corrected_coordinates_the_keypoints_come_with_a_warning(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / COORDS_V7_CSV).unlink()
    paths = Paths(data_dir=data, work_dir=tmp_path / "work")
    series = competition.series_table(paths, "train")
    # the synthetic labels, like the real ones, miss a level here and there: those points are estimated and said
    with (
        pytest.warns(UserWarning, match=r"series miss \d+ points in train_label_coordinates.csv: estimated"),
        pytest.warns(UserWarning, match=COORDS_V7_CSV),
    ):
        keypoints = tables.keypoints_table(paths, series)
    assert set(keypoints["series_id"]) == set(series["series_id"])
    assert (keypoints.groupby("series_id").size() == 2 * len(LEVEL_NAMES)).all()
    guessed = estimated_series(keypoints)
    assert guessed and guessed < set(series["series_id"])
    t2 = keypoints[keypoints["view"] == "t2"].pivot_table("relative_x", ["series_id", "level"], "side")
    assert (t2["L"] < t2["R"]).all()  # the derived front-of-disc point lies in front of the canal


def test_a_series_whose_labelled_files_cannot_be_read_is_named_and_the_others_keep_their_keypoints(
    tiny_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / COORDS_V7_CSV).unlink()
    paths = Paths(data_dir=data, work_dir=tmp_path / "work")
    series = competition.series_table(paths, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = tables.keypoints_table(paths, series)
    coords = pd.read_csv(data / TRAIN_COORDINATES_CSV)
    t1 = clean.loc[clean["view"] == "t1", ["study_id", "series_id"]].iloc[0]
    t2 = clean.loc[clean["view"] == "t2", ["study_id", "series_id"]].iloc[0]
    for (study, series_id), every in ((t1, False), (t2, True)):
        labelled = coords.loc[coords["series_id"] == series_id, "instance_number"].unique()
        for instance in labelled if every else labelled[:1]:  # T1: its first labelled file; T2: all of them
            (paths.series_dir("train", study, series_id) / f"{instance}.dcm").write_bytes(b"not a DICOM file")
    with pytest.warns(UserWarning, match=rf"1 series have labelled points but none .*: study {t2.study_id} series"):
        found = tables.keypoints_table(paths, series)
    assert t2.series_id not in set(found["series_id"])
    pd.testing.assert_frame_equal(
        found.reset_index(drop=True), clean[clean["series_id"] != t2.series_id].reset_index(drop=True)
    )  # T1 read its size from its next labelled file: the same points


# --- the solution's metadata files -------------------------------------------------------------------
def _copy(tiny_data: Path, tmp_path: Path) -> Paths:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return Paths(data_dir=data, work_dir=tmp_path / "work")


def _per_condition(coords: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """``coords_v7``-style rows in the layout of ``coords_rsna_improved.csv``: a condition per row, T1 points as
    the two foramina, T2 points under the spinal canal, levels written as in train.csv, plus an axial row."""
    view = coords["series_id"].map(series.set_index("series_id")["view"])
    foramen = coords["side"].map({"L": CONDITION_TITLES[CONDITIONS[1]], "R": CONDITION_TITLES[CONDITIONS[2]]})
    out = coords.assign(condition=np.where(view == "t1", foramen, CONDITION_TITLES[CONDITIONS[0]]))
    out["level"] = out["level"].str.lower().str.replace("/", "_")
    axial = out.iloc[:1].assign(series_id=123, condition=CONDITION_TITLES[CONDITIONS[3]])
    return pd.concat([out, axial]).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_coords_rsna_improved_gives_the_keypoints_of_coords_v7(tiny_data: Path, tmp_path: Path) -> None:
    paths = _copy(tiny_data, tmp_path)
    series = competition.series_table(paths, "train")
    expected = tables.keypoints_table(paths, series)
    v7 = paths.data_file(COORDS_V7_CSV)
    _per_condition(pd.read_csv(v7), series).to_csv(paths.data_file(COORDS_IMPROVED_CSV))  # with its index column
    v7.unlink()
    found = tables.keypoints_table(paths, series)
    assert set(found["source"]) == {COORDS_IMPROVED_CSV}
    columns = [c for c in found.columns if c != "source"]
    pd.testing.assert_frame_equal(found[columns], expected[columns])


def test_a_keypoint_file_with_other_columns_is_named_with_the_columns_expected(tiny_data: Path, tmp_path: Path) -> None:
    paths = _copy(tiny_data, tmp_path)
    other = tmp_path / "coords_pretrain.csv"  # the pretraining dataset's image coordinates: no series ids
    pd.DataFrame(columns=["source", "filename", "level", "x", "y", "relative_x", "relative_y"]).to_csv(other)
    with pytest.raises(competition.TableError, match=r"coords_pretrain\.csv is not a keypoint file") as error:
        tables.keypoints_table(paths, competition.series_table(paths, "train"), str(other))
    assert "coords_v7.csv (series_id, level, side, relative_x, relative_y)" in str(error.value)
    assert "lacks series_id, side" in str(error.value)


def test_a_metadata_file_is_found_by_name_in_an_attached_dataset(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _copy(tiny_data, tmp_path)
    dataset = tmp_path / "input" / "rsna2024-solution-metadata"
    dataset.mkdir(parents=True)
    shutil.move(paths.data_file(COORDS_V7_CSV), dataset / COORDS_V7_CSV)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    assert tables.corrected_keypoints_file(paths) == dataset / COORDS_V7_CSV
    assert tables.metadata_path(paths, COORDS_V7_CSV, "keypoints_file") == dataset / COORDS_V7_CSV
    with pytest.raises(competition.TableError, match=r"folds_file='metadata\.csv': no such file"):
        tables.metadata_path(paths, SOLUTION_METADATA_CSV, "folds_file")


def _solution_metadata(paths: Paths) -> pd.DataFrame:
    """A ``metadata.csv`` as the solution's: one row per series (every plane), folds dealt by study id."""
    series = pd.read_csv(paths.data_file("train_series_descriptions.csv"))
    studies = np.sort(series["study_id"].unique())
    fold_of = dict(zip(studies, np.arange(len(studies))[::-1] % 4, strict=True))
    return series.assign(fold=series["study_id"].map(fold_of))


def test_the_solutions_folds_are_used_when_asked(tiny_data: Path, tmp_path: Path) -> None:
    paths = _copy(tiny_data, tmp_path)
    meta = _solution_metadata(paths)
    meta.to_csv(paths.data_file(SOLUTION_METADATA_CSV), index=False)
    built = tables.build_training_tables(paths, PreprocessConfig(folds_file=SOLUTION_METADATA_CSV))
    fold_of = meta.groupby("study_id")["fold"].first()
    assert (built["series"]["fold"] == built["series"]["study_id"].map(fold_of)).all()
    saved = tables.load_table(paths, "folds")
    assert (saved["fold"].to_numpy() == saved["study_id"].map(fold_of).to_numpy()).all()


def test_solution_folds_that_split_or_miss_a_study_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    paths = _copy(tiny_data, tmp_path)
    meta = _solution_metadata(paths)
    targets = competition.targets_table(pd.read_csv(paths.data_file("train.csv")))
    path = tmp_path / SOLUTION_METADATA_CSV
    split = meta.copy()
    split.loc[split.index[0], "fold"] = (split["fold"].iloc[0] + 1) % 4
    split.to_csv(path, index=False)
    with pytest.raises(competition.TableError, match="more than one fold"):
        tables.solution_folds(path, targets, 4)
    meta[meta["study_id"] != targets["study_id"].iloc[0]].to_csv(path, index=False)
    with pytest.raises(competition.TableError, match="gives no fold to 1 training studies"):
        tables.solution_folds(path, targets, 4)
    meta.to_csv(path, index=False)
    with pytest.raises(competition.TableError, match="n_folds=5"):
        tables.solution_folds(path, targets, 5)
    meta.drop(columns="fold").to_csv(path, index=False)
    with pytest.raises(competition.TableError, match="expected columns study_id, fold; it lacks fold"):
        tables.solution_folds(path, targets, 4)


def _listing(tmp_path: Path, text: str) -> Paths:
    folder = tmp_path / "competition"
    folder.mkdir(exist_ok=True)
    (folder / "test_series_descriptions.csv").write_text(text)
    for study, series in ((1, 10), (2, 20), (3, 31), (3, 32)):
        (folder / "test_images" / str(study) / str(series)).mkdir(parents=True, exist_ok=True)
    return Paths(folder, tmp_path / "work")


def test_ids_stay_whole_numbers_and_a_row_that_does_not_parse_is_named_by_line_and_study(tmp_path: Path) -> None:
    paths = _listing(
        tmp_path,
        "study_id,series_id,series_description\n"
        "1,10,Sagittal T1\n"
        "2,,Sagittal T2/STIR\n"  # line 3: no series id
        "\n"  # line 4
        "2,20.0,Sagittal T2/STIR\n"  # written as a float somewhere: still the id 20
        "3,31,Axial T2,extra\n"  # line 6
        "x3,32,Sagittal T1\n",  # line 7
    )
    message = (
        r"4 rows left out: line 3 \(study 2\): series_id '' is not an id; line 4: empty line; "
        r"line 6 \(study 3\): 4 fields where the header has 3; line 7: study_id 'x3' is not an id"
    )
    with pytest.warns(UserWarning, match=message):
        table = competition.read_csv(paths, "test_series_descriptions.csv")
    assert table[["study_id", "series_id"]].to_numpy().tolist() == [[1, 10], [2, 20]]
    assert str(table["study_id"].dtype) == "int64" and str(table["series_id"].dtype) == "int64"
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        series = competition.series_table(paths, "test")
    assert not again  # the same file's faults are said once
    assert [str(paths.series_dir("test", r.study_id, r.series_id)) for r in series.itertuples()] == [
        str(paths.images_dir("test") / "1" / "10"),
        str(paths.images_dir("test") / "2" / "20"),
    ]
    assert competition.study_ids(paths, "test") == [1, 2, 3]  # line 6 still names its study; "x3" names none


def test_a_study_whose_rows_are_bad_still_gets_its_rows_and_the_sample_submission_adds_its_studies(
    tmp_path: Path,
) -> None:
    paths = _listing(tmp_path, "study_id,series_id,series_description\n1,10,Sagittal T1\n3,,Sagittal T1\n")
    assert competition.study_ids(paths, "test") == [1, 3]  # study 3's only row has no series id: priors, not dropped
    (paths.data_dir / "sample_submission.csv").write_text(
        "row_id,normal_mild,moderate,severe\n7_spinal_canal_stenosis_l1_l2,0.3,0.3,0.4\n"
    )
    with pytest.warns(UserWarning, match=r"expects studies that test_series_descriptions.csv does not list .*\[7\]"):
        assert competition.study_ids(paths, "test") == [1, 3, 7]


def test_descriptions_are_read_leniently_and_an_unknown_one_is_named(tmp_path: Path, capsys) -> None:
    paths = _listing(
        tmp_path,
        "study_id,series_id,series_description\n"
        "1,10,Sagittal T1\n2,20,sagittal t2 stir\n3,31,Sagittal T2 FLAIR\n3,32,Coronal T2\n",
    )
    with pytest.warns(UserWarning, match=r"1 series of no known view are not read: study 3 series 32 'Coronal T2'"):
        listed = competition.listed_series(paths, "test")
    assert listed[["series_id", "view", "series_description"]].to_numpy().tolist() == [
        [10, "t1", "Sagittal T1"],
        [20, "t2", "Sagittal T2/STIR"],
        [31, "t2", "Sagittal T2/STIR"],
    ]
    assert "2 series descriptions read as their view's: study 2 series 20 'sagittal t2 stir'" in capsys.readouterr().out


def test_the_listings_faults_are_kept_for_their_studies_summary(tmp_path: Path) -> None:
    paths = _listing(
        tmp_path,
        "study_id,series_id,series_description\n1,10,Sagittal T1\n2,20,Coronal T2\n3,31,Sagittal T2/STIR\n"
        "3,33,Sagittal T1\n",  # study 3's T1 has no image folder
    )
    faults = FaultLog()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        series = competition.series_table(paths, "test", faults)
    assert series["series_id"].tolist() == [10, 31]
    assert faults.frame().to_numpy().tolist() == [
        [2, 20, "not read: 'Coronal T2' is no known view"],
        [3, 33, "not read: listed, but it has no image folder"],
    ]
    assert len(said) == 2  # each kind said once, as before; the log adds no warning of its own


def test_a_missing_images_folder_is_said_once_beside_its_series(tmp_path: Path) -> None:
    paths = _listing(tmp_path, "study_id,series_id,series_description\n1,10,Sagittal T1\n2,20,Sagittal T2/STIR\n")
    shutil.rmtree(paths.images_dir("test"))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert competition.series_table(paths, "test").empty
    messages = [str(w.message) for w in said]
    assert messages[0] == (
        f"{paths.images_dir('test')} does not exist, so no test series can be read: is {paths.data_dir} the "
        "competition's folder?"
    )
    assert messages[1].startswith("2 test series have no image folder")


def test_a_listing_row_left_out_is_kept_for_its_studys_summary(tmp_path: Path) -> None:
    paths = _listing(
        tmp_path,
        "study_id,series_id,series_description\n1,10,Sagittal T1\n2,,Sagittal T2/STIR\n3,31,Axial T2,extra\n"
        "\nx4,40,Sagittal T1\n",
    )
    faults = FaultLog()
    with pytest.warns(UserWarning, match="4 rows left out"):
        competition.series_table(paths, "test", faults)
    assert faults.frame().to_numpy().tolist() == [
        [2, -1, "test_series_descriptions.csv line 3 not read: series_id '' is not an id"],
        [3, 31, "test_series_descriptions.csv line 4 not read: 4 fields where the header has 3"],
    ]  # the empty line and "x4" name no study: said in the warning, kept for none


def test_labels_are_matched_leniently_and_an_unknown_one_is_named() -> None:
    labels = pd.DataFrame(
        {
            "study_id": [1, 2],
            "spinal_canal_stenosis_l1_l2": [" normal / mild", "Servere"],
            "left_neural_foraminal_narrowing_l1_l2": ["Severe", None],
        }
    )
    with pytest.warns(
        UserWarning, match=r"1 labels name no severity .*: study 2 spinal_canal_stenosis_l1_l2 'Servere'"
    ):
        targets = competition.targets_table(labels)
    assert targets["spinal_canal_stenosis_l1_l2"].tolist() == [0, -100]
    assert targets["left_neural_foraminal_narrowing_l1_l2"].tolist() == [2, -100]


def test_a_table_of_the_version_that_said_plane_still_loads(tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path / "work")
    paths.tables_dir.mkdir(parents=True)
    old = "study_id,series_id,series_description,plane,split,fold\n1,10,Sagittal T1,t1,train,0\n"
    paths.table("series").write_text(old)
    assert tables.load_table(paths, "series")["view"].tolist() == ["t1"]


def test_a_listing_without_the_columns_read_is_named_with_its_header(tmp_path: Path) -> None:
    paths = _listing(tmp_path, "study,series,description\n1,10,Sagittal T1\n")
    with pytest.raises(competition.TableError, match="lacks the columns study_id, series_id, series_description"):
        competition.series_table(paths, "test")


def test_labelled_points_follow_their_image_when_it_is_turned() -> None:
    """A point clicked on a T1 image stored facing the other way lands where the turned image shows it."""
    title = CONDITION_TITLES[CONDITIONS[1]]
    group = pd.DataFrame({"condition": title, "level": LEVEL_NAMES[:2], "x": [10.0, 12.0], "y": [30.0, 40.0]})
    stored = tables._series_points(group, "t1", Turn(100, 80), study_id=1, series_id=2)
    turned = tables._series_points(group, "t1", Turn(100, 80, flip_x=True), study_id=1, series_id=2)
    assert stored[0][3:7] == (LEVEL_NAMES[0], "L", 10 / 80, 30 / 100)
    assert turned[0][3:7] == (LEVEL_NAMES[0], "L", 69 / 80, 30 / 100)


def _store_turned(data: Path, study_id: int) -> None:
    """A study's series stored turned, their headers true of the stored pixels, and every label (competition
    coordinates and the corrected file) clicked on the stored images: T1 and axial facing the other way, T2 also
    upside down."""
    listing = pd.read_csv(data / "train_series_descriptions.csv")
    labels, corrected = pd.read_csv(data / TRAIN_COORDINATES_CSV), pd.read_csv(data / COORDS_V7_CSV)
    for row in listing[listing["study_id"] == study_id].itertuples():
        upside_down = row.series_description == "Sagittal T2/STIR"
        for path in (data / "train_images" / str(study_id) / str(row.series_id)).glob("*.dcm"):
            ds = pydicom.dcmread(path)
            pixels, iop = ds.pixel_array, np.asarray(ds.ImageOrientationPatient, float)
            (rows, cols), spacing = pixels.shape, np.asarray(ds.PixelSpacing, float)
            position = np.asarray(ds.ImagePositionPatient, float) + (cols - 1) * spacing[1] * iop[:3]
            iop[:3] *= -1
            if upside_down:
                position, iop[3:] = position + (rows - 1) * spacing[0] * iop[3:], -iop[3:]
            ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(iop)
            ds.PixelData = np.ascontiguousarray(pixels[:: -1 if upside_down else 1, ::-1]).tobytes()
            ds.save_as(path)
            clicked = (labels["series_id"] == row.series_id) & (labels["instance_number"] == ds.InstanceNumber)
            labels.loc[clicked, "x"] = cols - 1 - labels.loc[clicked, "x"]
            if upside_down:
                labels.loc[clicked, "y"] = rows - 1 - labels.loc[clicked, "y"]
        mine = corrected["series_id"] == row.series_id
        corrected.loc[mine, "relative_x"] = (cols - 1) / cols - corrected.loc[mine, "relative_x"]
        if upside_down:
            corrected.loc[mine, "relative_y"] = (rows - 1) / rows - corrected.loc[mine, "relative_y"]
    labels.to_csv(data / TRAIN_COORDINATES_CSV, index=False)
    corrected.to_csv(data / COORDS_V7_CSV, index=False)


@pytest.mark.parametrize("corrected", [True, False])
def test_training_tables_are_the_same_whichever_way_the_images_are_stored(
    tiny_data: Path, tmp_path: Path, corrected: bool
) -> None:
    """Images stored turned are read turned back, and so are the points clicked on them: keypoints, axial levels
    and axial localiser samples equal those of the same study stored the usual way."""
    built = {}
    for name in ("usual", "turned"):
        data = tmp_path / name
        shutil.copytree(tiny_data, data)
        if name == "turned":
            _store_turned(data, int(pd.read_csv(data / "train.csv")["study_id"].iloc[0]))
        if not corrected:
            (data / COORDS_V7_CSV).unlink()
        paths = Paths(data, tmp_path / f"work_{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables_ = tables.build_training_tables(paths, PreprocessConfig())
            axial = axial_crops.prepare_training(
                paths, tables_["series"], tables_["keypoints"], PreprocessConfig(), False
            )
        built[name] = (tables_["keypoints"], axial.levels, axial.keypoints)
    for usual, turned in zip(built["usual"], built["turned"], strict=True):
        pd.testing.assert_frame_equal(turned, usual, atol=1e-9)


def test_a_labelled_study_without_sagittal_series_is_named(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    labels = pd.read_csv(data / "train.csv")
    pd.concat([labels, labels.iloc[[0]].assign(study_id=123)]).to_csv(data / "train.csv", index=False)
    with pytest.warns(UserWarning, match=r"1 studies of train.csv have no sagittal series to read .*: \[123\]"):
        built = tables.build_training_tables(Paths(data, tmp_path / "work"), PreprocessConfig())
    assert 123 not in set(built["targets"]["study_id"])


def test_a_labelled_point_outside_its_image_is_named_and_estimated(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / COORDS_V7_CSV).unlink()
    coords = pd.read_csv(data / TRAIN_COORDINATES_CSV)
    paths = Paths(data, tmp_path / "work")
    series = competition.series_table(paths, "train")
    t1 = coords[coords["series_id"].isin(series.loc[series["view"] == "t1", "series_id"])].index[0]
    coords.loc[t1, "y"] = 5000.0
    coords.to_csv(data / TRAIN_COORDINATES_CSV, index=False)
    row = coords.loc[t1]
    named = f"study {row.study_id} series {row.series_id} {row.level} \\({row.condition}\\)"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        keypoints = tables.keypoints_table(paths, series)
    text = "\n".join(str(w.message) for w in said)
    assert re.search(f"labelled points lie outside their image .*{named}", text), text
    assert row.series_id in estimated_series(keypoints)
    assert keypoints["relative_y"].between(0, 1).all()
