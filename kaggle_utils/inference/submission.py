"""The submission: one prediction per row id from the presets' rows, routed as each preset's ``routes`` rank it; 25
rows for every study, the class priors of the training labels where no model predicted (or not as a distribution);
and ``Prediction``, what a run produced, with the summary of what each study got.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.core.config import ConfigError
from kaggle_utils.core.constants import IGNORE_INDEX, LABEL_COLUMNS, SEVERITY_COLUMNS, condition_family, row_id
from kaggle_utils.core.faults import FAULT_COLUMNS
from kaggle_utils.core.views import view_named


# --- merging -------------------------------------------------------------------------------------
def route(levels: pd.DataFrame, routes: dict[str, dict[str, int]]) -> pd.DataFrame:
    """One prediction per row id: average over series and models per preset, then over the presets of the first
    rank that predicted the row, as each preset's ``routes`` (``presets.preset_routes``) rank it for the row's
    condition family. A preset in ``levels`` that ``routes`` does not know is an error that names it."""
    if levels.empty:
        return pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS])
    unknown = sorted(set(levels["preset"]) - set(routes))
    if unknown:
        raise ConfigError(f"predictions of presets {', '.join(unknown)}, which the routing does not know")
    per_preset = levels.groupby(["row_id", "preset"])[list(SEVERITY_COLUMNS)].mean().reset_index()
    per_preset["family"] = per_preset["row_id"].map(condition_family)
    ranks = [routes[p].get(f, np.nan) for p, f in zip(per_preset["preset"], per_preset["family"], strict=True)]
    per_preset["rank"] = np.asarray(ranks, dtype=float)  # NaN: the preset does not route that family
    routed = per_preset.dropna(subset=["rank"])
    first = routed.groupby("row_id")["rank"].transform("min")
    merged = routed[routed["rank"] == first].groupby("row_id")[list(SEVERITY_COLUMNS)].mean()
    return merged.reset_index()


def label_priors(targets: pd.DataFrame) -> pd.DataFrame:
    """Class frequencies of each label column (add-one smoothed): the fallback prediction and the baseline."""
    rows = []
    for column in LABEL_COLUMNS:
        labels = targets[column].to_numpy()
        counts = np.bincount(labels[labels != IGNORE_INDEX].astype(int), minlength=3) + 1.0
        rows.append((column, *(counts / counts.sum())))
    return pd.DataFrame(rows, columns=["column", *SEVERITY_COLUMNS]).set_index("column")


def complete_submission(merged: pd.DataFrame, study_ids: list[int], priors: pd.DataFrame) -> pd.DataFrame:
    """25 rows for every study: model predictions where they exist, priors elsewhere; rows sum to one. A prediction
    that is not a distribution (a value that is not finite, or all zero) is replaced by the priors, with a warning
    naming its rows: a submission with one such value would fail to score."""
    template = pd.DataFrame(
        [(row_id(s, c), c, s) for s in study_ids for c in LABEL_COLUMNS], columns=["row_id", "column", "study_id"]
    )
    out = template.merge(merged, on="row_id", how="left")
    values = out[list(SEVERITY_COLUMNS)].to_numpy(float)
    found = ~np.isnan(values).all(axis=1)
    broken = found & ~_distributions(values)
    if broken.any():
        named = ", ".join(out.loc[broken, "row_id"].head(10))
        warnings.warn(
            f"{int(broken.sum())} predicted rows are not distributions: the priors replace them: {named}", stacklevel=2
        )
    missing = ~found | broken
    out.loc[missing, list(SEVERITY_COLUMNS)] = priors.loc[out.loc[missing, "column"]].to_numpy()
    values = out[list(SEVERITY_COLUMNS)].to_numpy(float).clip(1e-7, None)
    out[list(SEVERITY_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return out[["row_id", *SEVERITY_COLUMNS]].reset_index(drop=True)


def _distributions(values: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of (N, 3) probabilities that are finite, not negative and not all zero."""
    return np.isfinite(values).all(axis=1) & (values >= 0).all(axis=1) & (values.sum(axis=1) > 0)


def rows_without_prediction(merged: pd.DataFrame, study_ids: list[int]) -> pd.DataFrame:
    """``study_id, row_id`` of every row of the studies that no model predicted, or not as a distribution
    (``complete_submission`` gives them the priors)."""
    valid = _distributions(merged[list(SEVERITY_COLUMNS)].to_numpy(float)) if len(merged) else []
    predicted = set(merged["row_id"][valid]) if len(merged) else set()
    rows = [(s, row_id(s, c)) for s in study_ids for c in LABEL_COLUMNS if row_id(s, c) not in predicted]
    return pd.DataFrame(rows, columns=["study_id", "row_id"]).astype({"study_id": "int64"})


def prior_submission(study_ids: list[int], priors: pd.DataFrame) -> pd.DataFrame:
    """The class-prior baseline: every row predicted by its column's label frequencies."""
    return complete_submission(pd.DataFrame(columns=["row_id", *SEVERITY_COLUMNS]), study_ids, priors)


def write_submission(submission: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(path, index=False)
    return path


@dataclass
class Prediction:
    """What a run over studies produced: the complete submission (sagittal and axial blended), the class-prior
    baseline, the keypoints, the complete sagittal-only submission of the same models, the axial rows (one per
    row id the axial branch predicted; empty without axial models or series), the axial levels' assigned slices
    and predicted points (``axial_points``), the rows the priors filled (``from_priors``), what the inputs cost
    (``faults``, ``faults.FAULT_COLUMNS``) and the sagittal series it was given (``study_id, series_id, view``)."""

    submission: pd.DataFrame
    baseline: pd.DataFrame
    keypoints: pd.DataFrame
    sagittal: pd.DataFrame
    axial: pd.DataFrame
    axial_points: pd.DataFrame
    from_priors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["study_id", "row_id"]))
    faults: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(FAULT_COLUMNS)))
    series: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["study_id", "series_id", "view"]))

    def summary(self, shown: int = 10) -> str:
        """Which studies were predicted fully, partly (which rows came from the priors, and why) and not at all,
        and the faults of the studies predicted fully (``study_summary`` per study, ``shown`` of each kind)."""
        studies = sorted(int(s) for s in self.submission["row_id"].str.split("_").str[0].astype("int64").unique())
        missing = self.from_priors.groupby("study_id")["row_id"].apply(list).to_dict()
        partly = [s for s in studies if 0 < len(missing.get(s, [])) < len(LABEL_COLUMNS)]
        none = [s for s in studies if len(missing.get(s, [])) == len(LABEL_COLUMNS)]
        faulty = sorted(set(self.faults["study_id"]) - set(partly) - set(none))
        lines = [
            f"{len(studies)} studies: {len(studies) - len(partly) - len(none)} predicted fully, {len(partly)} partly, "
            f"{len(none)} not at all (class priors); {len(self.faults)} faults in the inputs"
        ]
        for label, group in (("partly", partly), ("not at all", none), ("fully, with faults", faulty)):
            lines += [f"  {label}: {self.study_summary(s, missing.get(s, []))}" for s in group[:shown]]
            if len(group) > shown:
                lines.append(f"  {label}: and {len(group) - shown} more studies")
        return "\n".join(lines)

    def study_summary(self, study_id: int, prior_rows: list[str]) -> str:
        """One study: how many rows of which families came from the priors, and its faults (or why no series
        could predict them)."""
        families = pd.Series([condition_family(r) for r in prior_rows], dtype=str).value_counts()
        rows = ", ".join(f"{family} {count}" for family, count in sorted(families.items()))
        faults = self.faults[self.faults["study_id"] == study_id]
        why = "; ".join(
            (f"series {f.series_id}: " if f.series_id >= 0 else "") + _short(f.message) for f in faults.itertuples()
        )
        if not why:
            views = sorted(set(self.series.loc[self.series["study_id"] == study_id, "view"]))
            why = f"the series listed for it: {', '.join(view_named(p).description for p in views) or 'none'}"
        head = f"study {study_id}" + (f": rows from the priors: {rows}" if rows else "")
        return f"{head}; {why}"


def _short(message: str) -> str:
    """A fault's message with its file's folders left out (the summary names the study and the series)."""
    without_folders = re.sub(r"[^\s(]*/(?=[^/\s]+\.dcm\b)", "", message)  # a file: its name
    return re.sub(r"\S*/\d+/\d+: ", "", without_folders)  # a series folder: named by the summary already
