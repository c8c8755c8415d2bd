"""Blending sagittal and axial predictions per condition family, with the metric-aware post-processing.

An axial model predicts the spinal and subarticular rows a sagittal model also predicts. Per family the two are
combined in log space, ``softmax(((1 - weight) * log p_sagittal + weight * log p_axial) / temperature)``: a
weighted geometric mean, sharpened when ``temperature < 1`` (blends are under-confident). Optionally the 2nd-place
team's rule follows: per study, the spinal row with the largest severe probability has it multiplied by
``SEVERE_BOOST`` and is renormalised, which helps the any-severe-spinal term. ``fit_blend`` picks the weights and
temperatures by grid search on out-of-fold predictions, and keeps the boost only when it lowers the score. The
spinal family's pair is fit on the spinal term and the any-severe term together: both are computed from the same
rows, and the any-severe term is a quarter of the score. With ``Blend.distance_mm = (full, zero)`` a row's axial
weight shrinks with the level point's distance d to its axial slice plane: whole up to ``full`` mm (the training
samples' limit: the axial models saw no farther slice), falling linearly to nothing at ``zero`` mm (inference's
limit), so a 4.9 mm match counts for little and a 0.5 mm one fully.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils.core.constants import CONDITIONS, SEVERITY_COLUMNS, condition_family
from kaggle_utils.core.metric import EPS, any_severe_spinal, score_parts, weighted_log_loss
from kaggle_utils.core.paths import Paths

BLEND_FAMILIES: tuple[str, ...] = ("spinal", "subarticular")
"""The condition families an axial model predicts."""

SEVERE_BOOST = 1.25
"""Factor on the largest spinal severe probability of a study (the 2nd-place team's constant)."""

LOG_CLIP = 1e-7
"""Probabilities are clipped here before the log, so a hard zero on one side cannot veto the other."""

WEIGHT_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0, 1, 21), 2).tolist())
"""Axial weights ``fit_blend`` tries by default (steps of 0.05, rounded so saved values read cleanly)."""

TEMPERATURE_GRID: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
"""Temperatures ``fit_blend`` tries by default."""

BOOST_FAMILY = "any_severe_boost"
REPORT_COLUMNS: tuple[str, ...] = (
    "family",
    "rows",
    "weight",
    "temperature",
    "sagittal_loss",
    "axial_loss",
    "blended_loss",
    "score_without_boost",
    "score_with_boost",
)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return np.log(np.clip(probs, LOG_CLIP, None))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))  # shift for overflow safety
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class FamilyBlend:
    """How one family's sagittal and axial probabilities combine: ``weight`` is the axial share in [0, 1];
    ``temperature`` divides the mixed log probabilities (< 1 sharpens)."""

    weight: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"blend weight must lie in [0, 1], got {self.weight}")
        if not self.temperature > 0.0:
            raise ValueError(f"blend temperature must be positive, got {self.temperature}")

    def apply(self, sagittal: np.ndarray, axial: np.ndarray, shrink: np.ndarray | None = None) -> np.ndarray:
        """Combined (n, 3) probabilities of aligned (n, 3) sagittal and axial probabilities; ``shrink`` (n,) in [0, 1]
        scales each row's axial weight (``distance_shrink``)."""
        weight = self.weight if shrink is None else self.weight * np.asarray(shrink, float)[:, None]
        mixed = (1.0 - weight) * _log_probs(sagittal) + weight * _log_probs(axial)
        return _softmax(mixed / self.temperature)


def distance_shrink(distance_mm: np.ndarray, limits: tuple[float, float] | None) -> np.ndarray | None:
    """(n,) factor on the axial weight of rows whose level point lies ``distance_mm`` from the slice plane: 1 up to
    ``limits[0]``, 0 from ``limits[1]``, linear between; None (no shrink) without ``limits``."""
    if limits is None:
        return None
    full, zero = limits
    d = np.abs(np.asarray(distance_mm, float))
    return np.clip((zero - d) / max(zero - full, 1e-9), 0.0, 1.0)


def _default_families() -> dict[str, FamilyBlend]:
    return {family: FamilyBlend() for family in BLEND_FAMILIES}


@dataclass(frozen=True)
class Blend:
    """Per-family ``FamilyBlend`` settings and whether the max-severe spinal boost follows."""

    families: dict[str, FamilyBlend] = field(default_factory=_default_families)
    severe_boost: bool = False
    distance_mm: tuple[float, float] | None = None  # the axial weight's distance limits (``distance_shrink``)

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(BLEND_FAMILIES)
        if unknown:
            raise ValueError(f"unknown blend families {sorted(unknown)}; known: {list(BLEND_FAMILIES)}")
        if self.distance_mm is not None and not 0.0 <= self.distance_mm[0] < self.distance_mm[1]:
            raise ValueError(f"blend distance limits must be 0 <= full < zero mm, got {self.distance_mm}")

    def to_dict(self) -> dict[str, Any]:
        families = {name: {"weight": fb.weight, "temperature": fb.temperature} for name, fb in self.families.items()}
        distance = None if self.distance_mm is None else list(self.distance_mm)
        return {"families": families, "severe_boost": self.severe_boost, "distance_mm": distance}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blend:
        _reject_unknown(data, ("families", "severe_boost", "distance_mm"), "blend")
        families = {}
        for name, settings in data.get("families", {family: {} for family in BLEND_FAMILIES}).items():
            if name not in BLEND_FAMILIES:
                raise ValueError(f"unknown blend family {name!r}; known: {list(BLEND_FAMILIES)}")
            _reject_unknown(settings, ("weight", "temperature"), f"blend family {name!r}")
            families[name] = FamilyBlend(**{k: float(v) for k, v in settings.items()})
        distance = data.get("distance_mm")
        distance = None if distance is None else (float(distance[0]), float(distance[1]))
        return cls(families=families, severe_boost=bool(data.get("severe_boost", False)), distance_mm=distance)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Blend:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no blend file at {path}")
        return cls.from_dict(json.loads(path.read_text()))


def _reject_unknown(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {what}; known: {list(known)}")


def boost_max_severe(submission: pd.DataFrame, factor: float = SEVERE_BOOST) -> pd.DataFrame:
    """A copy of ``submission`` where, per study, the spinal row with the largest severe probability has it
    multiplied by ``factor`` and that row is renormalised; other rows are unchanged."""
    boosted = submission.copy()
    ids = boosted["row_id"].astype(str)
    spinal = np.flatnonzero(ids.str.contains(CONDITIONS[0]).to_numpy())  # spinal canal stenosis
    if spinal.size == 0:
        return boosted
    values = boosted[list(SEVERITY_COLUMNS)].to_numpy(float, copy=True)
    study = ids.str.split("_").str[0].to_numpy()[spinal]
    # positions index the series so that idxmax returns positions, whatever the frame's index is
    top = pd.Series(values[spinal, 2], index=spinal).groupby(study).idxmax().to_numpy(int)
    values[top, 2] *= factor
    values[top] /= values[top].sum(axis=1, keepdims=True)
    boosted[list(SEVERITY_COLUMNS)] = values
    return boosted


def _families_of(row_ids: pd.Series) -> np.ndarray:
    return row_ids.map(condition_family).to_numpy()


def blend_rows(sagittal: pd.DataFrame, axial: pd.DataFrame, blend: Blend) -> pd.DataFrame:
    """The blended submission: ``row_id`` + probabilities, rows summing to one, in the sagittal order followed by
    the rows only the axial frame has (of a blended family).

    Rows of a blended family in both frames get the family's rule (the axial weight shrunk by the axial frame's
    ``distance_mm`` when ``blend.distance_mm`` is set); rows in one frame only keep that frame's probabilities; other
    families keep sagittal. The severe boost follows when ``blend.severe_boost``."""
    columns = list(SEVERITY_COLUMNS)
    sag_ids = sagittal["row_id"].astype(str).reset_index(drop=True)
    values = sagittal[columns].to_numpy(float, copy=True)  # written in place below
    axial = axial.assign(row_id=axial["row_id"].astype(str)).drop_duplicates("row_id").set_index("row_id")
    # an axial frame with no rows still needs a usable dtype for the lookups below
    axial_values = axial[columns].astype(float)
    has_distance = "distance_mm" in axial
    distances = axial["distance_mm"].astype(float).fillna(0.0) if has_distance else pd.Series(0.0, index=axial.index)

    families = _families_of(sag_ids)
    in_axial = sag_ids.isin(axial_values.index).to_numpy()
    for family, fb in blend.families.items():
        rows = np.flatnonzero(in_axial & (families == family))
        if rows.size:
            shrink = distance_shrink(distances.loc[sag_ids.iloc[rows]].to_numpy(), blend.distance_mm)
            values[rows] = fb.apply(values[rows], axial_values.loc[sag_ids.iloc[rows]].to_numpy(), shrink)

    extra = axial_values[~axial_values.index.isin(sag_ids)]
    extra = extra[np.isin(_families_of(extra.index.to_series()), list(blend.families))]
    out = pd.DataFrame(np.vstack([values, extra.to_numpy()]), columns=columns)
    out.insert(0, "row_id", [*sag_ids, *extra.index])
    out[columns] = out[columns].to_numpy() / out[columns].to_numpy().sum(axis=1, keepdims=True)
    return boost_max_severe(out) if blend.severe_boost else out


@dataclass(frozen=True)
class SevereTerm:
    """The any-severe-spinal term of every spinal row with a sagittal prediction (``rows``: ``row_id, severe_true,
    sample_weight``; ``sagittal``: their (n, 3) probabilities), the blended rows at positions ``blended`` replaced."""

    rows: pd.DataFrame
    sagittal: np.ndarray
    blended: np.ndarray

    def loss(self, probs: np.ndarray) -> float:
        values = np.clip(self.sagittal / self.sagittal.sum(axis=1, keepdims=True), EPS, 1 - EPS)
        values[self.blended] = probs
        return any_severe_spinal(self.rows, values)


def _grid_losses(
    sagittal: np.ndarray,
    axial: np.ndarray,
    truth: np.ndarray,
    sample_weight: np.ndarray,
    weights: np.ndarray,
    temperatures: np.ndarray,
    severe: SevereTerm | None = None,
    shrink: np.ndarray | None = None,
) -> np.ndarray:
    """(len(weights), len(temperatures)) weighted log losses of the combined rule, as the metric computes them
    (probabilities clipped to [EPS, 1 - EPS]), plus the any-severe term with ``severe``."""
    losses = np.empty((len(weights), len(temperatures)))
    for i, weight in enumerate(weights):
        for j, temperature in enumerate(temperatures):
            probs = FamilyBlend(float(weight), float(temperature)).apply(sagittal, axial, shrink)
            probs = np.clip(probs, EPS, 1 - EPS)
            losses[i, j] = weighted_log_loss(truth, probs, sample_weight)
            losses[i, j] += 0.0 if severe is None else severe.loss(probs)
    return losses


def _severe_term(solution: pd.DataFrame, sagittal: pd.DataFrame, blended_ids: pd.Series) -> SevereTerm:
    """The ``SevereTerm`` of the spinal rows of ``solution`` with a sagittal prediction, ``blended_ids`` blended."""
    spinal = solution.merge(sagittal, on="row_id")
    rows = spinal[["row_id", "sample_weight"]].assign(severe_true=spinal[SEVERITY_COLUMNS[2]].to_numpy(float))
    position = pd.Series(np.arange(len(spinal)), index=spinal["row_id"])
    probs = spinal[[f"{c}_sag" for c in SEVERITY_COLUMNS]].to_numpy(float)
    return SevereTerm(rows, probs, position.loc[blended_ids].to_numpy(int))


def _fit_family(
    family: str,
    sagittal: pd.DataFrame,
    axial: pd.DataFrame,
    solution: pd.DataFrame,
    weights: np.ndarray,
    temperatures: np.ndarray,
    distance_mm: tuple[float, float] | None = None,
) -> tuple[FamilyBlend, dict[str, Any]]:
    columns = list(SEVERITY_COLUMNS)
    solution = solution[_families_of(solution["row_id"]) == family]
    merged = solution.merge(sagittal, on="row_id").merge(axial, on="row_id")
    if merged.empty:
        return FamilyBlend(weight=0.0, temperature=1.0), {"family": family, "rows": 0}
    truth = merged[columns].to_numpy(float)
    sag = merged[[f"{c}_sag" for c in columns]].to_numpy(float)
    ax = merged[[f"{c}_ax" for c in columns]].to_numpy(float)
    sample_weight = merged["sample_weight"].to_numpy(float)

    severe = _severe_term(solution, sagittal, merged["row_id"]) if family == "spinal" else None
    shrink = distance_shrink(merged["distance_mm"].to_numpy(float), distance_mm) if "distance_mm" in merged else None
    losses = _grid_losses(sag, ax, truth, sample_weight, weights, temperatures, severe, shrink)
    i, j = np.unravel_index(np.argmin(losses), losses.shape)
    fit = (weights[i : i + 1], temperatures[j : j + 1])
    losses = _grid_losses(sag, ax, truth, sample_weight, *fit, shrink=shrink)  # the family's term alone
    ends = _grid_losses(sag, ax, truth, sample_weight, np.array([0.0, 1.0]), np.array([1.0]))[:, 0]
    fitted = FamilyBlend(weight=float(weights[i]), temperature=float(temperatures[j]))
    return fitted, {
        "family": family,
        "rows": len(merged),
        "weight": fitted.weight,
        "temperature": fitted.temperature,
        "sagittal_loss": float(ends[0]),
        "axial_loss": float(ends[1]),
        "blended_loss": float(losses[0, 0]),
    }


def _suffixed(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
    kept = ["row_id", *SEVERITY_COLUMNS, *(["distance_mm"] if "distance_mm" in frame else [])]
    renamed = frame[kept].rename(columns={c: f"{c}{suffix}" for c in SEVERITY_COLUMNS})
    return renamed.assign(row_id=renamed["row_id"].astype(str))


def _fit_boost(
    sagittal: pd.DataFrame, axial: pd.DataFrame, solution: pd.DataFrame, families: dict[str, FamilyBlend], **kw: Any
) -> tuple[bool, dict[str, Any]]:
    blended = blend_rows(sagittal, axial, Blend(families=families, severe_boost=False, **kw))
    scored = solution[solution["row_id"].astype(str).isin(blended["row_id"])]
    if scored.empty:
        return False, {"family": BOOST_FAMILY, "rows": 0}
    without = score_parts(scored, blended)["score"]
    with_boost = score_parts(scored, boost_max_severe(blended))["score"]
    return with_boost < without, {
        "family": BOOST_FAMILY,
        "rows": len(scored),
        "blended_loss": min(without, with_boost),
        "score_without_boost": without,
        "score_with_boost": with_boost,
    }


def fit_blend(
    sagittal: pd.DataFrame,
    axial: pd.DataFrame,
    solution: pd.DataFrame,
    weights: Sequence[float] | np.ndarray = WEIGHT_GRID,
    temperatures: Sequence[float] | np.ndarray = TEMPERATURE_GRID,
    distance_mm: tuple[float, float] | None = None,
) -> tuple[Blend, pd.DataFrame]:
    """The ``Blend`` minimising each family's weighted log loss over the (weight, temperature) grid on the rows
    both frames and the solution have, and the severe boost when it lowers the score; plus a report, one row per
    family and one (``any_severe_boost``) for the boost.

    ``solution`` is the metric's solution frame (``metric.solution_from_targets``). A family without such rows
    keeps the sagittal probabilities (weight 0, temperature 1). Grids without weight 0 / 1 and temperature 1 may
    fit worse than one side alone: the defaults include them. ``distance_mm``: the limits of the axial weight's
    shrink with distance (``distance_shrink``; the axial frame's ``distance_mm`` column), fit with them and kept."""
    weights, temperatures = np.asarray(weights, float), np.asarray(temperatures, float)
    truth = solution[["row_id", *SEVERITY_COLUMNS, "sample_weight"]].assign(row_id=solution["row_id"].astype(str))
    sag, ax = _suffixed(sagittal, "_sag"), _suffixed(axial, "_ax")
    families, report = {}, []
    for family in BLEND_FAMILIES:
        families[family], row = _fit_family(family, sag, ax, truth, weights, temperatures, distance_mm)
        report.append(row)
    boost, row = _fit_boost(sagittal, axial, solution, families, distance_mm=distance_mm)
    report.append(row)
    blend = Blend(families=families, severe_boost=boost, distance_mm=distance_mm)
    return blend, pd.DataFrame(report, columns=list(REPORT_COLUMNS))


def load_blend(paths: Paths) -> Blend:
    """The blend fit out of fold beside the models (``models/blend.json``, written by the CV of notebook 04); without
    it, sagittal and axial predictions count equally (``Blend()``), which a warning says."""
    path = paths.blend_file
    if path.exists():
        return Blend.load(path)
    warnings.warn(
        f"{path} not found (the CV of notebook 04 fits it): sagittal and axial predictions weigh the same", stacklevel=2
    )
    return Blend()
