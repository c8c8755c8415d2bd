"""Cross-validation: fold f's training studies through fold f's models from the raw DICOMs, as at test time, and
the same models on crops cut from the ground-truth keypoints (the oracle), so that what the localisers lose shows
beside what the classifiers learnt; the scores per condition and level; and the localisers' errors, with the
series they missed most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from kaggle_utils.core.config import InferConfig, PreprocessConfig
from kaggle_utils.core.constants import ALL_STUDIES_FOLD, CONDITIONS, LEVEL_SLUGS, STAGE1_GRID, condition_family
from kaggle_utils.core.metric import score_parts, solution_from_targets
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import FULL_PRESETS
from kaggle_utils.core.views import LEVEL_VIEW, view_named
from kaggle_utils.inference.axial_branch import levels_recentred
from kaggle_utils.inference.blend import Blend, blend_rows, fit_blend
from kaggle_utils.inference.ensemble import load_models
from kaggle_utils.inference.run import Inference
from kaggle_utils.inference.submission import Prediction, label_priors
from kaggle_utils.io.dicom import read_series, stray_images
from kaggle_utils.io.point_gaps import estimated_series
from kaggle_utils.io.tables import load_table, points_by_series, series_points
from kaggle_utils.preprocessing.axial_samples import SIDES
from kaggle_utils.preprocessing.intensity import intensity_window
from kaggle_utils.preprocessing.sagittal import stage1_volume, stage2_crops


# --- scores --------------------------------------------------------------------------------------
def _solution_for(submission: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """The metric's solution rows of the studies a submission covers."""
    studies = submission["row_id"].str.split("_").str[0].astype(int).unique()
    return solution_from_targets(targets[targets["study_id"].isin(studies)])


def score_submission(submission: pd.DataFrame, targets: pd.DataFrame) -> dict[str, float]:
    """The competition score parts of a submission against the targets of the studies it covers."""
    return score_parts(_solution_for(submission, targets), submission, "row_id")


def side_terms(submission: pd.DataFrame, targets: pd.DataFrame, family: str = "foraminal") -> dict[str, float]:
    """The metric's term of a sided family, left and right rows apart and together (the family's own term)."""
    solution = _solution_for(submission, targets)
    solution = solution[solution["row_id"].map(condition_family) == family]
    side = solution["row_id"].str.split("_").str[1]
    terms = {which: score_parts(solution[side == which], submission)[family] for which in ("left", "right")}
    return {**terms, "both": score_parts(solution, submission)[family]}


def score_table(submissions: dict[str, pd.DataFrame], targets: pd.DataFrame) -> pd.DataFrame:
    """Weighted log loss per condition and level of each named submission (e.g. the model and the class-prior
    baseline, over the same studies), then the four terms of the score and the score.

    Rows: ``condition, level, rows`` (labelled rows scored) and one column per submission. A condition-level
    row is the metric's family term restricted to that label column; columns nobody labelled are left out."""
    solution = _solution_for(next(iter(submissions.values())), targets)
    columns = solution["row_id"].str.split("_", n=1).str[1]
    records = []
    for condition in CONDITIONS:
        for level in LEVEL_SLUGS:
            part = solution[columns == f"{condition}_{level}"]
            if part.empty:
                continue
            family = condition_family(condition)
            losses = {name: score_parts(part, sub)[family] for name, sub in submissions.items()}
            records.append({"condition": condition, "level": level, "rows": len(part), **losses})
    families = solution["row_id"].map(condition_family)
    totals = {name: score_parts(solution, sub) for name, sub in submissions.items()}
    for term in next(iter(totals.values())):
        rows = int((families == term).sum()) if term in set(families) else np.nan
        records.append({"condition": term, "level": "all", "rows": rows, **{n: t[term] for n, t in totals.items()}})
    table = pd.DataFrame(records)
    return table.astype({"rows": "Int64"})  # any_severe_spinal and score pool studies, so they have no row count


# --- out-of-fold runs ----------------------------------------------------------------------------
@dataclass
class CrossValidation:
    """The out-of-fold prediction (from predicted keypoints; its ``sagittal`` part the same models without the axial
    branch), the oracle's (ground-truth sagittal keypoints, same models, TTA, routing and blend; None when not
    asked), the class-prior baseline of the same studies, and the blend of sagittal and axial predictions fit on
    them (``blend.fit_blend``, with its report)."""

    prediction: Prediction
    oracle: pd.DataFrame | None = None
    blend: Blend = dataclasses.field(default_factory=Blend)
    blend_report: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def submission(self) -> pd.DataFrame:
        return self.prediction.submission

    @property
    def baseline(self) -> pd.DataFrame:
        return self.prediction.baseline

    @property
    def keypoints(self) -> pd.DataFrame:
        return self.prediction.keypoints


def cross_validate(
    paths: Paths,
    series: pd.DataFrame,
    targets: pd.DataFrame,
    folds: list[int],
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    device: torch.device,
    true_points: Mapping[int, np.ndarray] | None = None,
) -> CrossValidation:
    """Out-of-fold inference on the training studies: fold f's studies go through fold f's models, from the raw
    DICOMs as at test time (predicted keypoints, TTA, routing); priors come from the other folds' labels. With
    ``true_points`` (series id -> (5, 2, 2)) the same models also run on crops cut from them: the oracle, which
    keeps the localisers' keypoints only for series without true ones (its axial levels are placed by the true
    sagittal points; the axial points are still predicted).
    The blend of the sagittal and axial predictions is fit on the out-of-fold rows of all the folds and applied to
    both (its two numbers per condition family are fit on the rows it scores: a slightly hopeful figure).
    Final models (fold -1, trained on every study) have no held-out studies and take no part."""
    if ALL_STUDIES_FOLD in folds:
        print(f"fold {ALL_STUDIES_FOLD} (final models on every study) has no held-out studies: not cross-validated")
        folds = [f for f in folds if f != ALL_STUDIES_FOLD]
    if not folds:
        raise ValueError("no folds to cross-validate: give the folds whose models were trained with validation")
    parts, oracles = [], []
    for fold in folds:
        fold_series = series[series["fold"] == fold]
        study_ids = sorted(int(s) for s in fold_series["study_id"].unique())
        priors = label_priors(targets[~targets["study_id"].isin(study_ids)])
        models = load_models(paths, [fold], device)
        run = (fold_series, study_ids, priors, Blend())  # the blend is fit below, on every fold's rows
        parts.append(Inference(paths, models, pre_cfg, infer_cfg).predict(*run, desc=f"OOF fold {fold}"))
        if true_points is not None:
            oracle = Inference(paths, models, pre_cfg, infer_cfg, given_points=true_points)
            oracles.append(oracle.predict(*run, desc=f"oracle fold {fold}"))
    joined = _joined(parts)
    print("out of fold: " + joined.summary())
    # the axial weight whole where the axial models were trained (01's limit), nothing at inference's limit
    limits = (pre_cfg.axial_max_distance_mm, infer_cfg.axial_max_distance_mm)
    limits = limits if limits[0] < limits[1] else None
    solution = _solution_for(joined.sagittal, targets)
    blend, report = fit_blend(joined.sagittal, joined.axial, solution, distance_mm=limits)
    joined.submission = blend_rows(joined.sagittal, joined.axial, blend)
    oracle = _joined(oracles) if oracles else None
    blended_oracle = None if oracle is None else blend_rows(oracle.sagittal, oracle.axial, blend)
    return CrossValidation(joined, blended_oracle, blend, report)


@dataclass
class Evaluation:
    """What the CV of notebook 04 reports: the cross-validation itself, the localisers' errors on the held-out folds,
    the score per condition and level of each submission beside the others, and the entries of ``cv.json``."""

    cv: CrossValidation
    errors: pd.DataFrame
    scores: pd.DataFrame
    entries: dict[str, Any]


def evaluate(
    paths: Paths,
    series: pd.DataFrame,
    truth: pd.DataFrame,
    targets: pd.DataFrame,
    folds: list[int],
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    device: torch.device,
) -> Evaluation:
    """The out-of-fold run of ``cross_validate`` (its oracle from the true keypoints ``truth``, its blend fit), the
    localisers' errors, the score table and the ``cv.json`` entries, in one call: notebook 04 prints and saves."""
    cv = cross_validate(paths, series, targets, folds, pre_cfg, infer_cfg, device, points_by_series(truth))
    errors = localiser_errors(paths, cv.keypoints, truth, folds)
    entries: dict[str, Any] = dict(score_submission(cv.submission, targets))
    entries["oracle_score"] = score_submission(cv.oracle, targets)["score"]
    entries["prior_score"] = score_submission(cv.baseline, targets)["score"]
    entries["sagittal_only_score"] = score_submission(cv.prediction.sagittal, targets)["score"]
    entries["stage1"] = stage1_report(errors)
    entries["blend"] = cv.blend.to_dict()
    # The T1 model's family, by side: a mix-up of the sides, or one side unlearnt, shows here first.
    entries["foraminal_by_side"] = {
        name: side_terms(submission, targets)
        for name, submission in (("model", cv.submission), ("oracle", cv.oracle), ("priors", cv.baseline))
    }
    entries["axial_checks"] = axial_check_counts(cv.prediction, paths)
    submissions = {
        "sagittal only": cv.prediction.sagittal,
        "with axial (OOF)": cv.submission,
        "oracle (true keypoints)": cv.oracle,
        "class priors": cv.baseline,
    }
    return Evaluation(cv, errors, score_table(submissions, targets), entries)


def axial_check_counts(prediction: Prediction, paths: Paths | None = None) -> dict[str, int]:
    """The ``cv.json`` counts of what the real data's patterns cost: levels whose localiser points inference
    recentred and images of another plane left out of the series it read; with ``paths``, the training samples with
    one side estimated and those dropped by the slice check (01's ``axial_checks`` table)."""
    counts = {}
    if paths is not None and paths.table("axial_checks").exists():
        checks = load_table(paths, "axial_checks")
        counts = {
            "one_sided_samples": int(checks["one_sided"].sum()),
            "samples_dropped_by_slice_check": int(checks["dropped"].sum()),
            "points_dropped_by_slice_check": int(checks["far_points"].sum()),
        }
    counts["levels_recentred"] = levels_recentred(prediction.axial_points)
    counts["stray_images_dropped"] = stray_images(prediction.faults["message"].tolist())
    return counts


def _joined(parts: list[Prediction]) -> Prediction:
    """The predictions of several folds as one."""
    fields = [f.name for f in dataclasses.fields(Prediction)]
    return Prediction(*(pd.concat([getattr(p, f) for p in parts], ignore_index=True) for f in fields))


# --- the localisers ------------------------------------------------------------------------------
def point_errors(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted point of a series with true keypoints: ``view, series_id, study_id, distance_px``
    (on the 256 grid) and ``dx, dy`` (absolute, in shares of the image). Points are matched per series and level
    after ordering each level's pair by x."""
    rows = []
    known = set(truth["series_id"]) - estimated_series(truth)  # an estimated point is no truth to score against
    for series_id, group in predicted.groupby("series_id"):
        if series_id not in known:
            continue
        error = np.abs(series_points(predicted, series_id) - series_points(truth, series_id)).reshape(-1, 2)
        view, study_id = group["view"].iloc[0], int(group["study_id"].iloc[0])
        rows += [(view, int(series_id), study_id, float(np.hypot(*e) * STAGE1_GRID), *e) for e in error]
    return pd.DataFrame(rows, columns=["view", "series_id", "study_id", "distance_px", "dx", "dy"])


def level_point_errors(oof: pd.DataFrame, samples: pd.DataFrame, view: str = LEVEL_VIEW) -> pd.DataFrame:
    """``point_errors`` of a localiser per level (its OOF rows ``series_id, level, point, relative_x, relative_y``)
    against its samples (``axial_keypoints``: point 0 is the left one, 1 the right)."""
    labelled = samples[samples["labelled"].astype(bool)] if "labelled" in samples else samples  # not the estimated
    truth = labelled.assign(point=labelled["side"].map({side: k for k, side in enumerate(SIDES)}))
    joined = oof.merge(truth, on=["series_id", "level", "point"], suffixes=("", "_true"))
    dx = (joined["relative_x"] - joined["relative_x_true"]).abs()
    dy = (joined["relative_y"] - joined["relative_y_true"]).abs()
    return pd.DataFrame(
        {
            "view": view,
            "series_id": joined["series_id"],
            "study_id": joined["study_id"],
            "distance_px": np.hypot(dx, dy) * STAGE1_GRID,
            "dx": dx,
            "dy": dy,
        }
    )


def oof_level_errors(paths: Paths, preset: str, folds: list[int], samples: pd.DataFrame) -> pd.DataFrame:
    """``level_point_errors`` of a per-level localiser's out-of-fold files (``oof/{preset}-f{fold}-s*.csv``)."""
    files = [f for fold in folds for f in sorted(paths.oof_dir.glob(f"{preset}-f{fold}-s*.csv"))]
    if not files:
        return pd.DataFrame(columns=["view", "series_id", "study_id", "distance_px", "dx", "dy"])
    return level_point_errors(pd.concat([pd.read_csv(f) for f in files], ignore_index=True), samples)


def localiser_errors(paths: Paths, predicted: pd.DataFrame, truth: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
    """``keypoint_errors`` of every localiser on the held-out ``folds``: the sagittal ones from the predicted
    keypoints of the CV run, those localised per level (axial) from their training OOF files, on the slices the
    ground-truth levels assign (their crops and classifiers are not part of inference yet)."""
    errors = [point_errors(predicted, truth)]
    if paths.table("axial_keypoints").exists():
        samples = load_table(paths, "axial_keypoints")
        errors += [oof_level_errors(paths, name, folds, samples) for name in PER_LEVEL_LOCALISERS]
    return summarise_errors(pd.concat([e for e in errors if len(e)], ignore_index=True))


PER_LEVEL_LOCALISERS = tuple(
    name for name, c in FULL_PRESETS.items() if c.stage == 1 and view_named(c.view).localised_per == "level"
)
"""The stage-1 presets localised per level (the axial localiser), whose errors come from their OOF files."""


def keypoint_errors(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per view: the mean distance in pixels of the 256 grid and the share of points within 5 px, and the
    solution's shares of single coordinates (x and y counted apart) within 1 % and 5 % of the image."""
    return summarise_errors(point_errors(predicted, truth))


def summarise_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """``keypoint_errors`` of point errors (``point_errors``, ``level_point_errors``, or both concatenated)."""
    rows = []
    for view, group in errors.groupby("view"):
        coordinates = group[["dx", "dy"]].to_numpy().ravel()
        rows.append(
            {
                "view": view,
                "mean_px": group["distance_px"].mean(),
                "within_5px": (group["distance_px"] < 5).mean(),
                "within_1pct": (coordinates < 0.01).mean(),
                "within_5pct": (coordinates < 0.05).mean(),
            }
        )
    return pd.DataFrame(rows, columns=["view", "mean_px", "within_5px", "within_1pct", "within_5pct"])


def stage1_report(errors: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``keypoint_errors`` as ``cv.json`` holds them: view -> metric -> value."""
    return {r["view"]: {k: float(v) for k, v in r.items() if k != "view"} for r in errors.to_dict("records")}


@dataclass(frozen=True)
class MissedSeries:
    """A held-out series whose keypoints the localisers missed, for the picture: its middle stage-1 slice, both
    point sets and the level crops each gives (middle slice of each level)."""

    title: str
    middle_slice: np.ndarray  # (256, 256) uint8
    predicted: np.ndarray  # (5, 2, 2) relative
    true: np.ndarray
    predicted_crops: np.ndarray  # (5, S, S) uint8
    true_crops: np.ndarray


def worst_localised(
    paths: Paths, series: pd.DataFrame, predicted: pd.DataFrame, truth: pd.DataFrame, cfg: PreprocessConfig, n: int
) -> list[MissedSeries]:
    """The ``n`` series with the largest mean keypoint error, each re-read and cropped from both point sets with
    the training crop function."""
    errors = point_errors(predicted, truth).groupby(["series_id", "view"])["distance_px"].mean()
    cases = []
    for (series_id, view), mean_px in errors.sort_values(ascending=False).head(n).items():
        row = series[series["series_id"] == series_id].iloc[0]
        read = read_series(paths.series_dir(row.split, row.study_id, series_id))
        window = intensity_window(read.slices, cfg.percentiles)
        volume = stage1_volume(read, cfg, window)
        points = {k: series_points(t, series_id) for k, t in (("pred", predicted), ("true", truth))}
        crops = {k: stage2_crops(read, p, view, cfg, window) for k, p in points.items()}
        middle = {k: c[:, c.shape[1] // 2] for k, c in crops.items()}
        title = f"{view.upper()} study {row.study_id}\nseries {series_id}\n{mean_px:.1f} px mean error"
        cases.append(
            MissedSeries(
                title, volume[len(volume) // 2], points["pred"], points["true"], middle["pred"], middle["true"]
            )
        )
    return cases
