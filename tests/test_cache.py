"""Whole preprocessing runs on a tiny synthetic dataset: studies with a missing or extra series, a bad series
that must not stop the run, an interrupted run that resumes, and parameter changes that invalidate the cache."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.paths import COORDS_V7_CSV, Paths
from kaggle_utils.dev.synthetic import make_dataset
from kaggle_utils.io import competition, tables
from kaggle_utils.preprocessing import cache

CFG = PreprocessConfig(num_workers=1)
EXTRA_SERIES = 123


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training studies, built once; tests work on copies."""
    return make_dataset(tmp_path_factory.mktemp("two_studies"), n_train=2, n_test=0, seed=3, workers=1, progress=False)


@pytest.fixture
def paths(pristine: Path, tmp_path: Path) -> Paths:
    shutil.copytree(pristine, tmp_path / "data")
    return Paths(tmp_path / "data", tmp_path / "work")


def _sagittal(paths: Paths) -> pd.DataFrame:
    table = pd.read_csv(paths.data_file("train_series_descriptions.csv"))
    return table[table["series_description"].str.startswith("Sagittal")]


def _planned_and_run(paths: Paths, cfg: PreprocessConfig = CFG) -> tuple[pd.DataFrame, list, list[str]]:
    series = competition.series_table(paths, "train")
    keypoints = tables.keypoints_table(paths, series)
    jobs = cache.plan_jobs(paths, series, tables.points_by_series(keypoints), cfg)
    return series, jobs, cache.run_jobs(jobs, cfg)


def _outputs(paths: Paths) -> dict[Path, int]:
    """Every cached array with its modification time (ns)."""
    return {p: p.stat().st_mtime_ns for root in ("stage1", "stage2") for p in (paths.work_dir / root).glob("*/*.npy")}


def test_study_without_t1_or_t2_and_with_two_t2_series(paths: Paths) -> None:
    sagittal = _sagittal(paths)
    first, second = sorted(sagittal["study_id"].unique())
    rows = sagittal.set_index(["study_id", "series_description"])["series_id"]
    t1_first, t2_first = rows[(first, "Sagittal T1")], rows[(first, "Sagittal T2/STIR")]
    # first study: its T1 folder is gone (row kept), and its T2 comes twice (a repeated acquisition)
    shutil.rmtree(paths.series_dir("train", first, t1_first))
    shutil.copytree(paths.series_dir("train", first, t2_first), paths.series_dir("train", first, EXTRA_SERIES))
    descriptions = pd.read_csv(paths.data_file("train_series_descriptions.csv"))
    extra = pd.DataFrame([{"study_id": first, "series_id": EXTRA_SERIES, "series_description": "Sagittal T2/STIR"}])
    # second study: no T2 row at all (folder kept)
    t2_second = rows[(second, "Sagittal T2/STIR")]
    descriptions = pd.concat([descriptions[descriptions["series_id"] != t2_second], extra])
    descriptions.to_csv(paths.data_file("train_series_descriptions.csv"), index=False)
    coords = pd.read_csv(paths.data_file(COORDS_V7_CSV))
    copied = coords[coords["series_id"] == t2_first].assign(series_id=EXTRA_SERIES)
    pd.concat([coords, copied]).to_csv(paths.data_file(COORDS_V7_CSV), index=False)

    with pytest.warns(UserWarning, match=rf"no image folder.*{t1_first}"):
        series, jobs, problems = _planned_and_run(paths)

    views = series.groupby("study_id")["view"].apply(sorted).to_dict()
    assert views == {first: ["t2", "t2"], second: ["t1"]}
    assert problems == []
    assert len(jobs) == 3
    for row in series.itertuples():
        assert paths.stage1_array(row.study_id, row.series_id).exists()
        assert np.load(paths.stage2_array(row.study_id, row.series_id)).shape[::2] == (5, 256)
    np.testing.assert_array_equal(
        np.load(paths.stage1_array(first, EXTRA_SERIES)), np.load(paths.stage1_array(first, t2_first))
    )


def test_a_bad_file_costs_its_slice_and_a_bad_series_only_itself(paths: Paths) -> None:
    damaged, broken = _sagittal(paths).iloc[0], _sagittal(paths).iloc[1]
    folder = paths.series_dir("train", damaged.study_id, damaged.series_id)
    n_files = len(list(folder.glob("*.dcm")))
    (folder / "5.dcm").write_bytes(b"truncated")
    for file in paths.series_dir("train", broken.study_id, broken.series_id).glob("*.dcm"):
        file.write_bytes(b"")
    left_out = rf"study {damaged.study_id} series {damaged.series_id}: slice left out: .*5\.dcm: cannot read"
    with pytest.warns(UserWarning, match=left_out):
        series, jobs, problems = _planned_and_run(paths)
    assert len(problems) == 1 and f"study {broken.study_id} series {broken.series_id}: not cached: " in problems[0]
    assert np.load(paths.stage1_array(damaged.study_id, damaged.series_id)).shape[0] == n_files - 1
    done = [r for r in series.itertuples() if r.series_id != broken.series_id]
    assert len(done) == len(series) - 1
    assert all(paths.stage1_array(r.study_id, r.series_id).exists() for r in done)
    assert not paths.stage1_array(broken.study_id, broken.series_id).exists()


def test_a_series_with_too_few_slices_is_not_cached(paths: Paths) -> None:
    short = _sagittal(paths).iloc[0]
    for file in sorted(paths.series_dir("train", short.study_id, short.series_id).glob("*.dcm"))[2:]:
        file.unlink()
    _, _, problems = _planned_and_run(paths)
    assert len(problems) == 1 and "2 usable slices" in problems[0] and "needs 3" in problems[0]


def _set_tags(folder: Path, **tags: object) -> None:
    for file in folder.glob("*.dcm"):
        ds = pydicom.dcmread(file)
        for tag, value in tags.items():
            setattr(ds, tag, value)
        ds.save_as(file)


def test_a_series_whose_slices_are_not_in_its_views_plane_is_not_cached(paths: Paths) -> None:
    """A "Sagittal T1" whose images are axial (a description that does not match its images) is refused."""
    wrong = _sagittal(paths).iloc[0]
    _set_tags(paths.series_dir("train", wrong.study_id, wrong.series_id), ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    _, _, problems = _planned_and_run(paths)
    assert len(problems) == 1 and f"series {wrong.series_id}: not cached: " in problems[0]
    assert f"listed as {wrong.series_description}, but its slices are axial, not sagittal" in problems[0]


def test_slices_that_claim_one_position_are_cached_in_instance_order_with_a_warning(paths: Paths) -> None:
    same = _sagittal(paths).iloc[0]
    _set_tags(paths.series_dir("train", same.study_id, same.series_id), ImagePositionPatient=[0.0, 0.0, 0.0])
    with pytest.warns(UserWarning, match=rf"series {same.series_id}: its \d+ slices claim one position"):
        _, _, problems = _planned_and_run(paths)
    assert problems == [] and paths.stage1_array(same.study_id, same.series_id).exists()


def test_an_interrupted_run_resumes_with_only_the_missing_work(paths: Paths) -> None:
    series, jobs, _ = _planned_and_run(paths)
    before = _outputs(paths)
    lost = paths.stage1_array(series.study_id[0], series.series_id[0])
    lost.unlink()  # killed before its rename: the array is missing and a temporary file is left
    leftover = lost.with_name(f".{lost.stem}.4242.tmp.npy")
    leftover.write_bytes(b"half an array")

    _, resumed, problems = _planned_and_run(paths)

    assert [(j.series_id, j.stage1_out, j.stage2_out) for j in resumed] == [(series.series_id[0], lost, None)]
    assert problems == [] and not leftover.exists()
    after = _outputs(paths)
    assert after.keys() == before.keys()
    assert [p for p in after if after[p] != before[p]] == [lost]  # nothing else was rewritten


def test_changing_a_parameter_invalidates_the_cache_even_after_an_interruption(paths: Paths) -> None:
    series, jobs, _ = _planned_and_run(paths)
    assert cache.plan_jobs(paths, series, {}, dataclasses.replace(CFG, num_workers=3)) == []  # not a parameter

    changed = dataclasses.replace(CFG, t2_height_mult=1.2)
    points = tables.points_by_series(tables.keypoints_table(paths, series))
    replanned = cache.plan_jobs(paths, series, points, changed)
    assert len(replanned) == len(jobs) and not _outputs(paths)  # stale arrays are gone, not trusted
    cache.run_jobs(replanned[:1], changed)  # then the run stops after one series

    remaining = cache.plan_jobs(paths, series, points, changed)
    assert [j.series_id for j in remaining] == [j.series_id for j in replanned[1:]]


def test_a_new_arrays_version_invalidates_the_cache(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    series, jobs, _ = _planned_and_run(paths)
    points = tables.points_by_series(tables.keypoints_table(paths, series))
    assert cache.plan_jobs(paths, series, points, CFG) == []
    monkeypatch.setattr(cache, "ARRAYS_VERSION", cache.ARRAYS_VERSION + 1)
    assert len(cache.plan_jobs(paths, series, points, CFG)) == len(jobs)
