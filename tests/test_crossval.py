"""Cross-validation: the scores per condition and level, the oracle on true keypoints, the localisers' errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_utils.core.config import InferConfig, PreprocessConfig
from kaggle_utils.core.constants import IGNORE_INDEX, LABEL_COLUMNS, SEVERITY_COLUMNS
from kaggle_utils.core.paths import Paths
from kaggle_utils.dev import bench_infer
from kaggle_utils.evaluation import crossval
from kaggle_utils.evaluation.crossval import (
    cross_validate,
    keypoint_errors,
    score_submission,
    score_table,
    side_terms,
    stage1_report,
    worst_localised,
)
from kaggle_utils.evaluation.viz import localisation_figure
from kaggle_utils.io.point_gaps import ESTIMATED
from kaggle_utils.io.tables import load_table, points_by_series, points_frame, series_points


def _submission(probs: dict[str, tuple[float, float, float]], default: tuple[float, float, float]) -> pd.DataFrame:
    """Studies 1 and 2, every row ``default`` except the row ids given."""
    ids = [f"{s}_{c}" for s in (1, 2) for c in LABEL_COLUMNS]
    return pd.DataFrame([(i, *probs.get(i, default)) for i in ids], columns=["row_id", *SEVERITY_COLUMNS])


def test_score_table_per_condition_and_level_by_hand():
    spinal, foraminal = "spinal_canal_stenosis_l1_l2", "left_neural_foraminal_narrowing_l1_l2"
    targets = pd.DataFrame(IGNORE_INDEX, index=[0, 1], columns=["study_id", *LABEL_COLUMNS])
    targets["study_id"] = [1, 2]
    targets.loc[0, spinal], targets.loc[1, spinal] = 0, 2  # weights 1 and 4
    targets.loc[0, foraminal] = 1  # weight 2
    model = _submission(
        {f"1_{spinal}": (0.5, 0.25, 0.25), f"2_{spinal}": (0.25, 0.25, 0.5), f"1_{foraminal}": (0.25, 0.5, 0.25)},
        default=(1 / 3, 1 / 3, 1 / 3),
    )
    priors = _submission({}, default=(0.5, 0.25, 0.25))
    table = score_table({"model": model, "priors": priors}, targets).set_index(["condition", "level"])

    ln2 = np.log(2)
    assert table.loc[("spinal_canal_stenosis", "l1_l2")].tolist() == pytest.approx([2, ln2, (ln2 + 4 * 2 * ln2) / 5])
    assert table.loc[("left_neural_foraminal_narrowing", "l1_l2")].tolist() == pytest.approx([1, ln2, 2 * ln2])
    # Unlabelled columns and the absent subarticular family are left out; the totals are the metric's.
    assert list(table.index.get_level_values("condition")) == [
        "spinal_canal_stenosis",
        "left_neural_foraminal_narrowing",
        "spinal",
        "foraminal",
        "any_severe_spinal",
        "score",
    ]
    for name, submission in (("model", model), ("priors", priors)):
        parts = score_submission(submission, targets)
        assert table[name].xs("all", level="level").to_dict() == pytest.approx(parts)
    assert table.loc[("spinal", "all"), "rows"] == 2 and pd.isna(table.loc[("score", "all"), "rows"])


def test_a_sided_family_is_scored_per_side_and_together_as_the_metric_does():
    left, right = "left_neural_foraminal_narrowing_l1_l2", "right_neural_foraminal_narrowing_l1_l2"
    targets = pd.DataFrame(IGNORE_INDEX, index=[0, 1], columns=["study_id", *LABEL_COLUMNS])
    targets["study_id"] = [1, 2]
    targets.loc[:, left], targets.loc[:, right] = 0, 2  # weights 1 and 4
    model = _submission({f"{s}_{left}": (0.5, 0.25, 0.25) for s in (1, 2)}, default=(0.25, 0.25, 0.5))
    terms = side_terms(model, targets)
    assert terms == pytest.approx({"left": np.log(2), "right": np.log(2), "both": np.log(2)})
    model = _submission({f"{s}_{right}": (0.25, 0.25, 0.5) for s in (1, 2)}, default=(0.25, 0.5, 0.25))
    terms = side_terms(model, targets)
    assert terms["left"] == pytest.approx(np.log(4)) and terms["right"] == pytest.approx(np.log(2))
    assert terms["both"] == pytest.approx(score_submission(model, targets)["foraminal"])
    assert terms["both"] == pytest.approx((2 * np.log(4) + 8 * np.log(2)) / 10)


def _keypoints(series_id: int, view: str, points: np.ndarray, study_id: int = 1) -> pd.DataFrame:
    return points_frame(study_id, series_id, view, points, "test")


def test_keypoint_errors_count_pixels_on_the_grid_and_coordinates_in_shares_of_the_image():
    truth = np.stack(
        [np.c_[np.full(5, 0.4), np.linspace(0.3, 0.7, 5)], np.c_[np.full(5, 0.6), np.linspace(0.3, 0.7, 5)]], 1
    )
    moved = truth.copy()
    moved[:, 0, 0] += 0.03  # every first point 0.03 of the image to the right: 7.68 px, within 5 % not 1 %
    predicted = pd.concat([_keypoints(9, "t1", moved), _keypoints(8, "t2", truth)])
    errors = keypoint_errors(predicted, pd.concat([_keypoints(9, "t1", truth), _keypoints(8, "t2", truth)]))
    t1, t2 = errors.set_index("view").loc["t1"], errors.set_index("view").loc["t2"]
    assert t1["mean_px"] == pytest.approx(0.03 * 256 / 2) and t1["within_5px"] == 0.5
    assert t1["within_1pct"] == 0.75 and t1["within_5pct"] == 1.0
    assert t2.tolist() == [0.0, 1.0, 1.0, 1.0]
    report = stage1_report(errors)
    assert set(report) == {"t1", "t2"} and set(report["t1"]) == {"mean_px", "within_5px", "within_1pct", "within_5pct"}


def test_a_series_with_an_estimated_true_point_is_not_scored():
    points = np.stack([np.c_[np.full(5, 0.4), np.linspace(0.3, 0.7, 5)]] * 2, 1) + [[0.0, 0.0], [0.2, 0.0]]
    truth = pd.concat([_keypoints(9, "t1", points), _keypoints(8, "t1", points)], ignore_index=True)
    truth.loc[truth.index[truth["series_id"] == 8][:1], "source"] = "test" + ESTIMATED
    errors = crossval.point_errors(pd.concat([_keypoints(9, "t1", points), _keypoints(8, "t1", points)]), truth)
    assert set(errors["series_id"]) == {9}


def test_a_per_level_localiser_is_scored_by_side_against_its_samples():
    samples = pd.DataFrame(
        {
            "study_id": 1,
            "series_id": 7,
            "level": ["L4/L5", "L4/L5", "L5/S1", "L5/S1"],
            "instance_number": [3, 3, 9, 9],
            "side": ["L", "R", "R", "L"],
            "relative_x": [0.6, 0.4, 0.41, 0.61],
            "relative_y": [0.5, 0.5, 0.55, 0.55],
        }
    )
    oof = pd.DataFrame(
        {
            "series_id": 7,
            "level": ["L4/L5", "L4/L5", "L5/S1", "L5/S1"],
            "point": [0, 1, 0, 1],  # left, right
            "relative_x": [0.6, 0.4 + 3 / 256, 0.61, 0.41],
            "relative_y": [0.5, 0.5 + 4 / 256, 0.55, 0.55],
        }
    )
    errors = crossval.level_point_errors(oof, samples)
    assert errors["distance_px"].tolist() == pytest.approx([0.0, 5.0, 0.0, 0.0])
    summary = crossval.summarise_errors(errors).set_index("view").loc["axial"]
    assert summary["mean_px"] == pytest.approx(1.25) and summary["within_5px"] == 0.75


def test_with_the_localisers_replaced_by_the_true_keypoints_the_score_is_the_oracles(
    tiny_data, prepared, tmp_path, monkeypatch
):
    """The oracle runs the same models, TTA and routing on the true keypoints: give the model path the same
    keypoints and the two submissions are one; with the (untrained) localisers they differ."""
    paths = Paths(tiny_data, tmp_path / "work")
    series, truth = load_table(prepared, "series"), load_table(prepared, "keypoints")
    bench_infer.write_bench_models(paths, prepared, series, "smoke")
    series = series[series["study_id"].isin(sorted(series["study_id"].unique())[:2])].assign(fold=0)
    targets, true_points = load_table(prepared, "targets"), points_by_series(truth)
    args = (paths, series, targets, [0], PreprocessConfig(), InferConfig(tta_angles=(0.0,)), torch.device("cpu"))
    plain = cross_validate(*args, true_points=true_points)
    assert not plain.submission.equals(plain.oracle)
    assert set(plain.keypoints["source"]) == {"stage1"}

    class LocalisedByTruth(crossval.Inference):
        def __init__(self, *args, given_points=None, **options):
            super().__init__(*args, given_points=true_points, **options)

    monkeypatch.setattr(crossval, "Inference", LocalisedByTruth)
    replaced = cross_validate(*args, true_points=true_points)
    pd.testing.assert_frame_equal(replaced.submission, replaced.oracle)
    assert score_submission(replaced.submission, targets) == score_submission(plain.oracle, targets)


def test_the_worst_localised_series_come_first_with_crops_from_both_point_sets(tiny_data, prepared):
    series, truth = load_table(prepared, "series"), load_table(prepared, "keypoints")
    ids = list(truth["series_id"].unique()[:3])
    predicted = pd.concat(
        [
            _keypoints(
                s,
                series.set_index("series_id").loc[s, "view"],
                series_points(truth, s) + 0.01 * k,
                int(series.set_index("series_id").loc[s, "study_id"]),
            )
            for k, s in enumerate(ids)
        ]
    )
    cases = worst_localised(prepared, series, predicted, truth, PreprocessConfig(), n=2)
    assert [c.title.split("series ")[1].split("\n")[0] for c in cases] == [str(ids[2]), str(ids[1])]
    assert cases[0].predicted_crops.shape == cases[0].true_crops.shape == (5, 256, 256)
    assert not np.array_equal(cases[0].predicted_crops, cases[0].true_crops)
    figure = localisation_figure(cases)
    assert len(figure.axes) == 2 * 2 * 6
