"""The competition metric against a case computed by hand."""

from __future__ import annotations

from math import log

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.core.constants import IGNORE_INDEX, LABEL_COLUMNS
from kaggle_utils.core.metric import ParticipantVisibleError, score, score_parts, solution_from_targets

ROWS = [  # row_id, true class, predicted (unnormalised) probabilities
    ("1_spinal_canal_stenosis_l1_l2", 0, (0.8, 0.1, 0.1)),
    ("1_spinal_canal_stenosis_l2_l3", 2, (0.2, 0.3, 0.5)),
    ("1_left_neural_foraminal_narrowing_l1_l2", 1, (1.0, 2.0, 1.0)),  # renormalised to 0.25/0.5/0.25
    ("1_left_subarticular_stenosis_l1_l2", 0, (0.5, 0.25, 0.25)),
    ("2_spinal_canal_stenosis_l1_l2", 1, (0.3, 0.6, 0.1)),
]


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    onehot = np.eye(3)[[r[1] for r in ROWS]]
    solution = pd.DataFrame(onehot, columns=["normal_mild", "moderate", "severe"])
    solution.insert(0, "row_id", [r[0] for r in ROWS])
    solution["sample_weight"] = [[1, 2, 4][r[1]] for r in ROWS]
    submission = pd.DataFrame([r[2] for r in ROWS], columns=["normal_mild", "moderate", "severe"])
    submission.insert(0, "row_id", [r[0] for r in ROWS])
    return solution, submission


def test_score_matches_hand_computation():
    solution, submission = frames()
    spinal = (1 * -log(0.8) + 4 * -log(0.5) + 2 * -log(0.6)) / (1 + 4 + 2)
    foraminal = -log(0.5)
    subarticular = -log(0.5)
    # study 1: a severe level, max p(severe) 0.5, weight 4; study 2: none severe, max p(severe) 0.1, weight 2
    any_severe = (4 * -log(0.5) + 2 * -log(0.9)) / (4 + 2)
    parts = score_parts(solution, submission, "row_id")
    assert parts["spinal"] == pytest.approx(spinal)
    assert parts["foraminal"] == pytest.approx(foraminal)
    assert parts["subarticular"] == pytest.approx(subarticular)
    assert parts["any_severe_spinal"] == pytest.approx(any_severe)
    expected = (spinal + foraminal + subarticular + any_severe) / 4
    assert score(solution, submission, "row_id") == pytest.approx(expected)
    assert score(solution, submission, "row_id", any_severe_scalar=2.0) == pytest.approx(expected + any_severe / 4)


def test_row_order_does_not_matter_and_extra_rows_are_ignored():
    solution, submission = frames()
    extra = pd.DataFrame([["3_spinal_canal_stenosis_l1_l2", 1.0, 0.0, 0.0]], columns=submission.columns)
    shuffled = pd.concat([submission.iloc[::-1], extra])
    assert score(solution, shuffled, "row_id") == pytest.approx(score(solution, submission, "row_id"))


def test_missing_rows_and_bad_values_are_errors():
    solution, submission = frames()
    with pytest.raises(ParticipantVisibleError, match="lacks 1"):
        score(solution, submission.iloc[1:], "row_id")
    submission.loc[0, "severe"] = np.nan
    with pytest.raises(ParticipantVisibleError, match="finite"):
        score(solution, submission, "row_id")


def test_solution_from_targets_one_hot_weights_and_missing():
    targets = pd.DataFrame([[7, *([0] * 24), 2]], columns=["study_id", *LABEL_COLUMNS])
    targets.loc[0, LABEL_COLUMNS[3]] = IGNORE_INDEX
    solution = solution_from_targets(targets)
    assert len(solution) == 24
    last = solution.set_index("row_id").loc[f"7_{LABEL_COLUMNS[-1]}"]
    assert last[["normal_mild", "moderate", "severe"]].tolist() == [0, 0, 1]
    assert last["sample_weight"] == 4
    assert f"7_{LABEL_COLUMNS[3]}" not in set(solution["row_id"])
