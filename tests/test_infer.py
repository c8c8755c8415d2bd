"""Routing of model outputs to conditions, priors, a complete submission, and studies split over devices."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from kaggle_utils.core.config import ConfigError, InferConfig, PreprocessConfig
from kaggle_utils.core.constants import LABEL_COLUMNS, SEVERITY_COLUMNS
from kaggle_utils.core.faults import FAULT_COLUMNS
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import FULL_PRESETS, preset_routes
from kaggle_utils.dev import bench_infer
from kaggle_utils.inference import axial_branch, ensemble, run
from kaggle_utils.inference.axial_branch import AXIAL_DISTANCE_SCALE_MM, merge_axial
from kaggle_utils.inference.blend import Blend, FamilyBlend
from kaggle_utils.inference.ensemble import load_models_on
from kaggle_utils.inference.run import Inference, StageTimer, split_by_study
from kaggle_utils.inference.submission import (
    Prediction,
    complete_submission,
    label_priors,
    prior_submission,
    route,
    rows_without_prediction,
)
from kaggle_utils.io import competition


def level_rows(preset: str, column: str, probs: tuple[float, float, float], study: int = 1) -> dict:
    return {
        "study_id": study,
        "series_id": 9,
        "preset": preset,
        "row_id": f"{study}_{column}",
        **dict(zip(SEVERITY_COLUMNS, probs, strict=True)),
    }


def test_routing_follows_the_solution():
    levels = pd.DataFrame(
        [
            level_rows("sp1", "spinal_canal_stenosis_l1_l2", (0.6, 0.3, 0.1)),
            level_rows("su", "spinal_canal_stenosis_l1_l2", (0.2, 0.5, 0.3)),
            level_rows("sp1", "left_subarticular_stenosis_l1_l2", (1.0, 0.0, 0.0)),  # not su: ignored
            level_rows("su", "left_subarticular_stenosis_l1_l2", (0.0, 1.0, 0.0)),
            level_rows("fo", "left_neural_foraminal_narrowing_l1_l2", (0.0, 0.0, 1.0)),  # T1 wins over T2
            level_rows("sp1", "left_neural_foraminal_narrowing_l1_l2", (1.0, 0.0, 0.0)),
            level_rows("sp1", "right_neural_foraminal_narrowing_l1_l2", (1.0, 0.0, 0.0)),  # no T1: from T2
        ]
    )
    merged = route(levels, preset_routes(FULL_PRESETS[name] for name in ("fo", "sp1", "su"))).set_index("row_id")
    assert merged.loc["1_spinal_canal_stenosis_l1_l2"].tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert merged.loc["1_left_subarticular_stenosis_l1_l2"].tolist() == [0.0, 1.0, 0.0]
    assert merged.loc["1_left_neural_foraminal_narrowing_l1_l2"].tolist() == [0.0, 0.0, 1.0]
    assert merged.loc["1_right_neural_foraminal_narrowing_l1_l2"].tolist() == [1.0, 0.0, 0.0]


def test_subarticular_falls_back_to_other_t2_models_without_su():
    levels = pd.DataFrame([level_rows("sp1", "left_subarticular_stenosis_l1_l2", (0.5, 0.5, 0.0))])
    assert route(levels, preset_routes([FULL_PRESETS["sp1"]]))["moderate"].tolist() == [0.5]


def test_a_preset_the_routing_does_not_know_is_named():
    levels = pd.DataFrame([level_rows("sp3", "spinal_canal_stenosis_l1_l2", (0.5, 0.5, 0.0))])
    with pytest.raises(ConfigError, match="presets sp3, which the routing does not know"):
        route(levels, preset_routes([FULL_PRESETS["sp1"]]))


def test_a_preset_that_routes_nothing_is_named():
    silent = dataclasses.replace(FULL_PRESETS["sp2"], routes=())
    with pytest.raises(ConfigError, match="presets sp2 route no condition family"):
        preset_routes([FULL_PRESETS["sp1"], silent])


def test_every_study_gets_25_finite_rows_summing_to_one():
    targets = pd.DataFrame([[1, *([0] * 25)], [2, *([2] * 25)]], columns=["study_id", *LABEL_COLUMNS])
    priors = label_priors(targets)
    assert priors.loc[LABEL_COLUMNS[0]].tolist() == pytest.approx([2 / 5, 1 / 5, 2 / 5])
    merged = pd.DataFrame(
        [["7_spinal_canal_stenosis_l1_l2", 2.0, 1.0, 1.0], ["7_spinal_canal_stenosis_l2_l3", np.nan, 1.0, 0.0]],
        columns=["row_id", *SEVERITY_COLUMNS],
    )
    not_one = "1 predicted rows are not distributions: the priors replace them: 7_spinal_canal_stenosis_l2_l3"
    with pytest.warns(UserWarning, match=not_one):
        submission = complete_submission(merged, [7, 8], priors)
    assert len(submission) == 50 and submission["row_id"].is_unique
    values = submission[list(SEVERITY_COLUMNS)].to_numpy()
    assert np.isfinite(values).all() and np.allclose(values.sum(1), 1)
    assert submission.iloc[0][list(SEVERITY_COLUMNS)].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert submission.iloc[1][list(SEVERITY_COLUMNS)].tolist() == pytest.approx(priors.iloc[1].tolist())
    missing = rows_without_prediction(merged, [7, 8])
    assert len(missing) == 49 and "7_spinal_canal_stenosis_l1_l2" not in set(missing["row_id"])


def test_the_summary_says_which_studies_lost_which_rows_and_why():
    merged = pd.DataFrame(
        [[f"7_{c}", 1.0, 0.0, 0.0] for c in LABEL_COLUMNS if "foraminal" in c], columns=["row_id", *SEVERITY_COLUMNS]
    )
    priors = label_priors(pd.DataFrame([[1, *([0] * 25)]], columns=["study_id", *LABEL_COLUMNS]))
    studies = [7, 8, 9]
    merged = pd.concat(
        [merged, pd.DataFrame([[f"9_{c}", 1.0, 0.0, 0.0] for c in LABEL_COLUMNS], columns=merged.columns)]
    )
    prediction = Prediction(
        submission=complete_submission(merged, studies, priors),
        baseline=prior_submission(studies, priors),
        keypoints=pd.DataFrame(),
        sagittal=pd.DataFrame(),
        axial=pd.DataFrame(),
        axial_points=pd.DataFrame(),
        from_priors=rows_without_prediction(merged, studies),
        faults=pd.DataFrame([(7, 71, "not used: bad header"), (9, 91, "slice left out: 3.dcm")], columns=FAULT_COLUMNS),
        series=pd.DataFrame(
            {"study_id": [7, 7, 8, 9], "series_id": [70, 71, 80, 90], "view": ["t1", "t2", "t1", "t2"]}
        ),
    )
    lines = prediction.summary().splitlines()
    assert lines[0] == "3 studies: 1 predicted fully, 1 partly, 1 not at all (class priors); 2 faults in the inputs"
    assert (
        lines[1]
        == "  partly: study 7: rows from the priors: spinal 5, subarticular 10; series 71: not used: bad header"
    )
    assert lines[2] == (
        "  not at all: study 8: rows from the priors: foraminal 10, spinal 5, subarticular 10; "
        "the series listed for it: Sagittal T1"
    )
    assert lines[3] == "  fully, with faults: study 9; series 91: slice left out: 3.dcm"


def test_stage_timer_adds_up_each_stage():
    timer = StageTimer()
    for _ in range(2):
        with timer("read"):
            pass
    with pytest.raises(ValueError), timer("crop"):  # a failing stage still counts
        raise ValueError
    assert set(timer.seconds) == {"read", "crop"} and all(s >= 0 for s in timer.seconds.values())


def test_studies_are_dealt_whole_over_the_devices() -> None:
    series = pd.DataFrame({"study_id": [5, 5, 7, 9, 9, 11, 3], "series_id": range(7)})
    shards = split_by_study(series, 2)
    assert [list(s["study_id"]) for s in shards] == [[5, 5, 9, 9, 3], [7, 11]]
    assert [len(s) for s in split_by_study(series, 3)] == [3, 2, 2]
    assert pd.concat(shards).sort_index().equals(series)


def test_two_devices_predict_what_one_does(tiny_data: Path, tmp_path: Path) -> None:
    """Two CPU "devices" (as the two cards of a T4 x2), each with its own copy of the models, one thread each."""
    data = Paths(tiny_data, tmp_path)
    series = competition.series_table(data, "train")
    series = series[series["study_id"].isin(sorted(series["study_id"].unique())[:3])]
    paths = Paths(tiny_data, tmp_path / "work")
    bench_infer.write_bench_models(paths, data, series, "smoke")
    cpu = torch.device("cpu")
    args = (PreprocessConfig(), InferConfig(tta_angles=(0.0, 10.0)))
    one = Inference(paths, load_models_on(paths, [cpu], [0])[0], *args).predict_table(series)
    timer = StageTimer()
    two = Inference(paths, load_models_on(paths, [cpu, cpu], [0]), *args, timer=timer).predict_table(series)
    keys = (["series_id", "level", "side"], ["series_id", "preset", "row_id"])
    for a, b, key in zip(one, two, keys, strict=True):
        assert len(a) == len(b) and set(a["study_id"]) == set(series["study_id"])
        a, b = (f.sort_values(key).reset_index(drop=True) for f in (a, b))
        pd.testing.assert_frame_equal(a, b, rtol=1e-6, atol=1e-6)
    assert set(timer.seconds) == {"read", "volume", "keypoints", "crop", "classify"}


def test_inference_imports_no_training_code():
    """The kernel's path: no augmentation, tasks, training loop, losses or loaders come with ``infer``."""
    listed = "print(' '.join(m for m in sys.modules if m.startswith('kaggle_utils')))"
    code = f"import sys, kaggle_utils.inference.run; {listed}"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    training = {
        f"kaggle_utils.{m}" for m in ("augment", "warps", "tasks", "engine", "losses", "loader", "data", "train")
    }
    assert "kaggle_utils.models.predictors" in loaded and not loaded & training


def test_axial_rows_of_several_series_are_averaged_by_distance() -> None:
    rows = [
        {**level_rows("ax", "spinal_canal_stenosis_l4_l5", (1.0, 0.0, 0.0)), "series_id": 1, "distance_mm": 0.0},
        {**level_rows("ax", "spinal_canal_stenosis_l4_l5", (0.0, 1.0, 0.0)), "series_id": 2, "distance_mm": -2.0},
        {**level_rows("ax", "left_subarticular_stenosis_l4_l5", (0.0, 0.0, 1.0)), "distance_mm": 4.0},
    ]
    merged = merge_axial(pd.DataFrame(rows), preset_routes([FULL_PRESETS["ax"]])).set_index("row_id")
    near, far = 1.0, np.exp(-2.0 / AXIAL_DISTANCE_SCALE_MM)  # the nearer slice counts e times more
    spinal = merged.loc["1_spinal_canal_stenosis_l4_l5", list(SEVERITY_COLUMNS)].tolist()
    assert spinal == pytest.approx([near / (near + far), far / (near + far), 0.0])
    assert merged.loc["1_left_subarticular_stenosis_l4_l5", list(SEVERITY_COLUMNS)].tolist() == pytest.approx([0, 0, 1])
    assert merged["distance_mm"].sort_index().tolist() == [4.0, 0.0]  # the nearest slice's, for the blend
    assert merge_axial(pd.DataFrame(), {}).empty


def test_each_fold_is_blended_before_the_folds_are_averaged() -> None:
    """The blend is fit on one fold's rows: the test ensemble blends each fold's sagittal and axial rows, then
    averages, which differs from blending the averages when the temperature is not 1."""
    fake = {name: FULL_PRESETS[name] for name in ("sp1", "ax")}
    models = ensemble.ModelSet(
        stage2={name: [ensemble.LoadedModel(None, cfg, None, fold) for fold in (0, 1)] for name, cfg in fake.items()}
    )
    spinal = "spinal_canal_stenosis_l4_l5"
    per_fold = {0: ((0.8, 0.1, 0.1), (0.2, 0.2, 0.6)), 1: ((0.3, 0.4, 0.3), (0.6, 0.3, 0.1))}
    rows = []
    for fold, (sagittal, axial) in per_fold.items():
        rows.append({**level_rows("sp1", spinal, sagittal), "fold": fold})
        rows.append({**level_rows("ax", spinal, axial), "fold": fold, "distance_mm": 0.0})
    blend = Blend({"spinal": FamilyBlend(0.5, 0.7), "subarticular": FamilyBlend(0.5, 1.0)})
    sagittal, axial, blended = run.blend_folds(pd.DataFrame(rows), models, blend)
    expected = np.mean([FamilyBlend(0.5, 0.7).apply(np.array([s]), np.array([a]))[0] for s, a in per_fold.values()], 0)
    np.testing.assert_allclose(blended[list(SEVERITY_COLUMNS)].to_numpy()[0], expected)
    np.testing.assert_allclose(sagittal[list(SEVERITY_COLUMNS)].to_numpy()[0], [0.55, 0.25, 0.2])
    columns = list(SEVERITY_COLUMNS)
    averaged = FamilyBlend(0.5, 0.7).apply(sagittal[columns].to_numpy(), axial[columns].to_numpy())
    assert not np.allclose(averaged[0], expected)  # blending the averages would give something else


def test_a_study_without_axial_series_keeps_its_sagittal_rows(tiny_data: Path, tmp_path: Path) -> None:
    """The kernel's path on two studies, one of them stripped of its axial series: 25 rows each; the axial branch
    changes the spinal and subarticular rows of the other one only, through the blend."""
    data = Paths(tiny_data, tmp_path)
    series = competition.series_table(data, "train")
    axial = axial_branch.axial_series_ids(data, "train")
    studies = [s for s in sorted(series["study_id"].unique()) if s in axial][:2]
    series = series[series["study_id"].isin(studies)]
    paths = Paths(tiny_data, tmp_path / "work")
    bench_infer.write_bench_models(paths, data, series, "smoke")
    models = load_models_on(paths, [torch.device("cpu")], [0])[0]
    stripped = {studies[1]: axial[studies[1]]}  # studies[0] reads as a study without Axial T2
    priors = label_priors(competition.targets_table(competition.read_csv(data, "train.csv")))
    args = (PreprocessConfig(), InferConfig(tta_angles=(0.0,)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "axial_series_ids", lambda *_: stripped)
        prediction = Inference(paths, models, *args).predict(series, studies, priors, Blend())
    submission, sagittal = (p.set_index("row_id") for p in (prediction.submission, prediction.sagittal))
    assert len(submission) == 50 and np.allclose(submission.sum(axis=1), 1)
    assert set(prediction.axial["row_id"].str.split("_").str[0].astype(int)) == {studies[1]}
    without = [r for r in submission.index if r.startswith(f"{studies[0]}_")]
    pd.testing.assert_frame_equal(submission.loc[without], sagittal.loc[without], atol=1e-9, rtol=0)
    changed = submission.index[~np.isclose(submission, sagittal.loc[submission.index]).all(axis=1)]
    assert len(changed) and all(r.startswith(f"{studies[1]}_") for r in changed)
    assert not any("foraminal" in r for r in changed)


def test_an_unreadable_axial_slice_drops_its_level_only(tiny_data: Path, tmp_path: Path) -> None:
    data = Paths(tmp_path / "data", tmp_path / "work")
    shutil.copytree(tiny_data, data.data_dir)
    axial = axial_branch.axial_series_ids(data, "train")
    series = competition.series_table(data, "train")
    series = series[series["study_id"] == next(s for s in sorted(series["study_id"].unique()) if s in axial)]
    bench_infer.write_bench_models(data, data, series, "smoke")
    models = load_models_on(data, [torch.device("cpu")], [0])[0]
    given = (data, models, PreprocessConfig(), InferConfig(tta_angles=(0.0,)))
    before = Inference(*given).predict_table(series, axial)[1].query("preset == 'ax'")
    broken = before.iloc[0]
    path = data.series_dir("train", int(broken.study_id), int(broken.series_id)) / f"{int(broken.instance_number)}.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]  # the header still reads; its pixels do not
    ds.save_as(path)
    with pytest.warns(UserWarning, match=f"series {int(broken.series_id)}: {broken.level} not predicted"):
        after = Inference(*given).predict_table(series, axial)[1].query("preset == 'ax'")
    kept = before[(before["series_id"] != broken.series_id) | (before["level"] != broken.level)]
    assert set(zip(after["series_id"], after["row_id"], strict=True)) == set(
        zip(kept["series_id"], kept["row_id"], strict=True)
    )


def test_the_axial_coverage_line_counts_levels_and_studies_without_axial_series() -> None:
    placed = pd.DataFrame(
        {"study_id": [1, 1, 1, 2], "level": ["L4/L5", "L4/L5", "L5/S1", "L1/L2"]}  # L4/L5 of study 1 twice
    )
    line = axial_branch.axial_coverage(placed, [1, 3], {1: [10, 11], 2: [20]})
    assert line.startswith("axial branch: 2 of 10 levels of 2 studies") and "1 of the studies without" in line


def test_the_models_used_are_listed_and_unfinished_missing_or_broken_runs_named(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    data = Paths(tiny_data, tmp_path)
    series = competition.series_table(data, "train")
    series = series[series["study_id"] == series["study_id"].iloc[0]]
    paths = Paths(tiny_data, tmp_path / "work")
    bench_infer.write_bench_models(paths, data, series, "smoke", n_folds=2)
    (paths.models_dir / "fs-f1-s42.pt").unlink()
    (paths.models_dir / "sp2-f1-s42.pt").rename(paths.models_dir / "sp2-f1-s42.state.pt")  # an interrupted run
    (paths.models_dir / "su-f1-s42.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning) as warned:
        models = ensemble.load_models(paths, None, torch.device("cpu"))
    said = [str(w.message) for w in warned]
    assert any("su-f1-s42.pt cannot be loaded and is left out of the ensemble" in m for m in said)
    assert any("sp2-f1-s42.state.pt: an unfinished run of sp2 fold 1, not used" in m for m in said)
    assert any("fs has no model for fold(s) [1], which others have" in m for m in said)
    assert any("su has no model for fold(s) [1]" in m for m in said)
    listed = capsys.readouterr().out
    assert "stage1 t1 [0, 1]" in listed and "fs [0]" in listed and "sp1 [0, 1]" in listed
    assert [m.fold for m in models.stage2["sp1"]] == [0, 1]
    with pytest.warns(UserWarning, match="unfinished run of sp2 fold 1"):
        ensemble.load_models(paths, [1], torch.device("cpu"))  # the CV of fold 1: its unfinished run is named too
    with pytest.raises(FileNotFoundError, match="train them \\(notebooks 02 and 03\\), or attach the weights dataset"):
        ensemble.load_models(paths, [5], torch.device("cpu"))
