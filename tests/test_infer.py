"""Routing of model outputs to conditions, priors and the completeness of the submission."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.config import InferConfig
from kaggle_utils.constants import LABEL_COLUMNS, SEVERITY_COLUMNS
from kaggle_utils.infer import complete_submission, label_priors, route


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
    merged = route(levels, InferConfig()).set_index("row_id")
    assert merged.loc["1_spinal_canal_stenosis_l1_l2"].tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert merged.loc["1_left_subarticular_stenosis_l1_l2"].tolist() == [0.0, 1.0, 0.0]
    assert merged.loc["1_left_neural_foraminal_narrowing_l1_l2"].tolist() == [0.0, 0.0, 1.0]
    assert merged.loc["1_right_neural_foraminal_narrowing_l1_l2"].tolist() == [1.0, 0.0, 0.0]


def test_subarticular_falls_back_to_other_t2_models_without_su():
    levels = pd.DataFrame([level_rows("sp1", "left_subarticular_stenosis_l1_l2", (0.5, 0.5, 0.0))])
    assert route(levels, InferConfig())["moderate"].tolist() == [0.5]


def test_every_study_gets_25_finite_rows_summing_to_one():
    targets = pd.DataFrame([[1, *([0] * 25)], [2, *([2] * 25)]], columns=["study_id", *LABEL_COLUMNS])
    priors = label_priors(targets)
    assert priors.loc[LABEL_COLUMNS[0]].tolist() == pytest.approx([2 / 5, 1 / 5, 2 / 5])
    merged = pd.DataFrame([["7_spinal_canal_stenosis_l1_l2", 2.0, 1.0, 1.0]], columns=["row_id", *SEVERITY_COLUMNS])
    with pytest.warns(UserWarning, match="2 studies fell back"):
        submission = complete_submission(merged, [7, 8], priors)
    assert len(submission) == 50 and submission["row_id"].is_unique
    values = submission[list(SEVERITY_COLUMNS)].to_numpy()
    assert np.isfinite(values).all() and np.allclose(values.sum(1), 1)
    assert submission.iloc[0][list(SEVERITY_COLUMNS)].tolist() == pytest.approx([0.5, 0.25, 0.25])
