"""The competition metric: sample-weighted log loss per condition family plus an any-severe-spinal term.

A re-implementation of the host's ``score`` in numpy/pandas with Kaggle's signature. Per family
(spinal, foraminal, subarticular; left and right pooled) the log loss is weighted 1/2/4 by the true
class; ``any_severe_spinal`` compares, per study, "any level is Severe" with the largest predicted
severe probability over the levels, weighted by the study's largest spinal weight. The score is the
mean of the four terms (the last scaled by ``any_severe_scalar``). Submission rows are renormalised to
sum to one and clipped away from 0 and 1 first, as sklearn's ``log_loss`` does inside the host metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kaggle_utils.core.constants import (
    CONDITION_FAMILIES,
    IGNORE_INDEX,
    LABEL_COLUMNS,
    SEVERITY_COLUMNS,
    SEVERITY_WEIGHTS,
    condition_family,
    row_id,
)

EPS = np.finfo(np.float64).eps


class ParticipantVisibleError(Exception):
    """An error in the submission that the participant may see (the host metric's name for it)."""


def score(
    solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str, any_severe_scalar: float = 1.0
) -> float:
    """The competition score (lower is better).

    Args:
        solution: ``row_id`` + one-hot ``normal_mild, moderate, severe`` + ``sample_weight``, labelled rows only.
        submission: ``row_id`` + the three probabilities; must contain every solution row id.
        row_id_column_name: name of the row id column in both frames.
        any_severe_scalar: weight of the any-severe-spinal term.
    """
    return score_parts(solution, submission, row_id_column_name, any_severe_scalar)["score"]


def score_parts(
    solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "row_id", any_severe_scalar: float = 1.0
) -> dict[str, float]:
    """The four terms of the score and the score itself: keys spinal, foraminal, subarticular, any_severe_spinal,
    score. A family absent from the solution is left out of the mean (useful for single-view checks)."""
    merged = _align(solution, submission, row_id_column_name)
    truth = merged[[f"{c}_true" for c in SEVERITY_COLUMNS]].to_numpy(float)
    probs = merged[[f"{c}_pred" for c in SEVERITY_COLUMNS]].to_numpy(float)
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), EPS, 1 - EPS)
    weights = merged["sample_weight"].to_numpy(float)
    families = merged[row_id_column_name].map(condition_family).to_numpy()

    parts: dict[str, float] = {}
    for family in CONDITION_FAMILIES:
        rows = families == family
        if rows.any():
            parts[family] = weighted_log_loss(truth[rows], probs[rows], weights[rows])
    if "spinal" in parts:
        parts["any_severe_spinal"] = any_severe_scalar * any_severe_spinal(
            merged[families == "spinal"], probs[families == "spinal"], row_id_column_name
        )
    parts["score"] = float(np.mean(list(parts.values())))
    return parts


def _align(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str) -> pd.DataFrame:
    for name, frame in (("solution", solution), ("submission", submission)):
        missing = {row_id_column_name, *SEVERITY_COLUMNS} - set(frame.columns)
        if missing:
            raise ParticipantVisibleError(f"{name} lacks columns {sorted(missing)}")
    values = submission[list(SEVERITY_COLUMNS)].to_numpy(float)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ParticipantVisibleError("submission probabilities must be finite and non-negative")
    merged = solution.merge(submission, on=row_id_column_name, how="left", suffixes=("_true", "_pred"))
    lost = merged[f"{SEVERITY_COLUMNS[0]}_pred"].isna()
    if lost.any():
        raise ParticipantVisibleError(
            f"submission lacks {lost.sum()} row ids, e.g. {merged.loc[lost, row_id_column_name].iloc[0]}"
        )
    return merged


def weighted_log_loss(truth: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> float:
    """A family's term: the log loss of one-hot ``truth`` under clipped ``probs`` (rows, 3), weighted per row."""
    per_row = -(truth * np.log(probs)).sum(axis=1)
    return float((weights * per_row).sum() / weights.sum())


def any_severe_spinal(spinal: pd.DataFrame, probs: np.ndarray, row_id_column_name: str = "row_id") -> float:
    """The any-severe-spinal term of ``spinal`` rows (``row_id``, ``severe_true``, ``sample_weight``) under their
    (rows, 3) probabilities: per study, "any level is Severe" against the largest severe probability."""
    study = spinal[row_id_column_name].str.split("_").str[0].to_numpy()
    frame = pd.DataFrame(
        {
            "study": study,
            "label": spinal["severe_true"].to_numpy(float),
            "pred": probs[:, 2],
            "weight": spinal["sample_weight"].to_numpy(float),
        }
    )
    per_study = frame.groupby("study").max()
    label, pred, weight = (per_study[c].to_numpy() for c in ("label", "pred", "weight"))
    pred = np.clip(pred, EPS, 1 - EPS)
    per_row = -(label * np.log(pred) + (1 - label) * np.log(1 - pred))
    return float((weight * per_row).sum() / weight.sum())


def solution_from_targets(targets: pd.DataFrame) -> pd.DataFrame:
    """The metric's solution frame from a targets table (``study_id`` + the 25 label columns as class
    indices, ``IGNORE_INDEX`` or NaN when missing): one-hot rows with sample weights, labelled rows only."""
    long = targets.melt(id_vars="study_id", value_vars=list(LABEL_COLUMNS), var_name="column", value_name="label")
    long = long[long["label"].notna() & (long["label"] != IGNORE_INDEX)]
    labels = long["label"].to_numpy(int)
    solution = pd.DataFrame({"row_id": [row_id(s, c) for s, c in zip(long["study_id"], long["column"], strict=True)]})
    for k, column in enumerate(SEVERITY_COLUMNS):
        solution[column] = (labels == k).astype(float)
    solution["sample_weight"] = np.asarray(SEVERITY_WEIGHTS)[labels]
    return solution.sort_values("row_id").reset_index(drop=True)
