"""Noisy labels and pseudo labels from the out-of-fold ensemble of a first training round.

The solution's code ignores the training labels that an out-of-fold (OOF) ensemble contradicts (confident
learning, threshold 0.85), and its best submission trained with ``0.5 * label loss + 0.5 * pseudo-label loss``.
Round 1 trains every preset on every fold and writes OOF probabilities (``WORK_DIR/oof``); this module turns them
into the two tables round 2 trains with (``Stage2Config.noisy_labels`` and ``pseudo_labels``):

- the **OOF ensemble**: per row id, the mean over series and fold models per preset, then the presets routed per
  condition exactly as inference routes them (``submission.route``), so a label is judged against the prediction the
  pipeline would submit and presets inference ignores for a condition do not vote on it;
- the **noisy-label table**: every labelled (study, condition, level) the ensemble covers, with its disagreement
  score ``1 - p(label)`` and a suggested class in the spirit of confident learning: the largest ``p(k) / t(k)``,
  where ``t(k)`` is the ensemble's average probability of class k on the rows labelled k in that condition family
  (its self-confidence, which corrects for classes it under-predicts, such as Severe); a label is noisy when its
  score reaches the threshold and the suggested class is another one;
- the **pseudo-label table**: the ensemble's probabilities as soft targets for every row it covers, labelled or
  not.

Studies without OOF predictions get neither, so train every fold in round 1. The tables come from models that saw
the other folds' labels, so round-2 CV is slightly optimistic (the solution's team OOF had the same leak).
With known flips (the synthetic ``label_flips.csv``) the detection gets a precision and a recall.

The command line writes both tables from a work folder's round-1 OOF (what notebooks/05_denoise does before it trains),
so a script can run the two rounds::

    python -m kaggle_utils.training.train --presets fs sp1 --folds 0 1 2 3                      # round 1
    python -m kaggle_utils.training.denoise --presets fs sp1 --threshold 0.85                   # the two tables
    python -m kaggle_utils.training.train --presets fs sp1 --run denoised \
        --set noisy_labels=work/tables/noisy_labels.csv --set pseudo_labels=work/tables/pseudo_labels.csv  # round 2
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.core import config, parameters, presets
from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.constants import (
    CONDITION_FAMILIES,
    CONDITIONS,
    IGNORE_INDEX,
    LABEL_COLUMNS,
    LEVEL_SLUGS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    condition_family,
    row_id,
)
from kaggle_utils.core.paths import LABEL_FLIPS_CSV, Paths
from kaggle_utils.core.presets import FULL_PRESETS, preset_routes
from kaggle_utils.inference.submission import route
from kaggle_utils.io.tables import SCHEMAS, load_table, save_table
from kaggle_utils.training.tasks import score_predictions

DEFAULT_THRESHOLD = 0.85
"""The solution's threshold: a label is noisy when the ensemble gives it at most 15 %."""

NOISY_COLUMNS = SCHEMAS["noisy_labels"]
"""Columns of the noisy-label table; ``label`` and ``suggested`` are class indices (0 Normal/Mild, 1 Moderate, 2 Severe;
``suggested`` -1 where no class of the family has a label to calibrate on)."""

PSEUDO_COLUMNS = SCHEMAS["pseudo_labels"]
"""Columns of the pseudo-label table: soft targets per study and row id."""

_CELLS: dict[str, tuple[str, str]] = {f"{c}_{lv}": (c, lv) for c in CONDITIONS for lv in LEVEL_SLUGS}
"""Label column -> (condition, level), in ``LABEL_COLUMNS`` order."""


# --- reading tables ------------------------------------------------------------------------------
def read_table(path: str | Path, field: str) -> pd.DataFrame:
    """A round-2 table named by a config field; a clear error names the file and the field when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{field}={str(path)!r}: {path} does not exist; write it with notebooks/05_denoise or set {field} to ''"
        )
    return pd.read_csv(path)


def load_oof(paths: Paths, configs: Iterable[TrainConfig], folds: Sequence[int]) -> pd.DataFrame:
    """The round's OOF files ``{preset}-f{fold}-s{seed}.csv`` of the given presets and folds that exist, with a
    ``preset`` column. Missing files are named in one line; none at all is an error."""
    frames, missing = [], []
    for cfg in configs:
        for fold in folds:
            path = paths.oof_dir / f"{paths.checkpoint(cfg.name, fold, cfg.seed).stem}.csv"
            if path.exists():
                frames.append(pd.read_csv(path).assign(preset=cfg.name))
            else:
                missing.append(path.name)
    if missing:
        print(f"no OOF predictions in {paths.oof_dir} for {len(missing)} preset-folds: {', '.join(missing)}")
    if not frames:
        raise FileNotFoundError(f"no OOF predictions in {paths.oof_dir}: train round 1 first (notebooks/03)")
    return pd.concat(frames, ignore_index=True)


# --- the ensemble and its tables -----------------------------------------------------------------
def oof_ensemble(oof: pd.DataFrame, configs: Iterable[TrainConfig] | None = None) -> pd.DataFrame:
    """One prediction per row id (``study_id, row_id`` + probabilities), routed per condition like inference by
    each preset's ``routes``: those of ``configs`` (the configs that made the OOF), else of the named presets."""
    configs = configs if configs is not None else (FULL_PRESETS[name] for name in oof["preset"].unique())
    merged = route(oof, preset_routes(configs))
    merged.insert(0, "study_id", merged["row_id"].str.split("_").str[0].astype(np.int64))
    return merged.sort_values("row_id", ignore_index=True)


def _long_labels(targets: pd.DataFrame) -> pd.DataFrame:
    """Labelled cells of a targets table as rows ``study_id, row_id, condition, level, label``."""
    records = [
        (int(study), row_id(int(study), column), *_CELLS[column], int(label))
        for study, values in zip(targets["study_id"], targets[list(LABEL_COLUMNS)].to_numpy(), strict=True)
        for column, label in zip(LABEL_COLUMNS, values, strict=True)
        if label != IGNORE_INDEX
    ]
    return pd.DataFrame(records, columns=["study_id", "row_id", "condition", "level", "label"])


def class_thresholds(probs: np.ndarray, labels: np.ndarray, families: np.ndarray) -> dict[str, np.ndarray]:
    """Confident learning's per-class thresholds, per condition family: the mean probability of class k over the
    rows labelled k (``inf`` for a class nobody in the family has, so it is never suggested)."""
    out = {}
    for family in CONDITION_FAMILIES:
        rows = families == family
        out[family] = np.array(
            [probs[rows & (labels == k), k].mean() if (rows & (labels == k)).any() else np.inf for k in range(3)]
        )
    return out


def flag(table: pd.DataFrame, threshold: float) -> pd.Series:
    """Which rows of a noisy-label table are noisy at ``threshold``: score reached and another class suggested."""
    return (table["score"] >= threshold) & (table["suggested"] >= 0) & (table["suggested"] != table["label"])


def noisy_table(ensemble: pd.DataFrame, targets: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Every labelled row the ensemble covers, scored by disagreement, most suspicious first (``NOISY_COLUMNS``)."""
    table = _long_labels(targets).merge(ensemble[["row_id", *SEVERITY_COLUMNS]], on="row_id", how="inner")
    probs = table[list(SEVERITY_COLUMNS)].to_numpy(float)
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = table["label"].to_numpy()
    families = table["condition"].map(condition_family).to_numpy()
    thresholds = class_thresholds(probs, labels, families)
    per_row = np.stack([thresholds[f] for f in families]) if len(table) else np.ones((0, 3))
    calibrated = probs / per_row  # 0 for a class without labels (inf threshold)
    table["prob_label"] = probs[np.arange(len(table)), labels]
    table["suggested"] = np.where(calibrated.max(axis=1) > 0, calibrated.argmax(axis=1), -1)
    table["score"] = 1.0 - table["prob_label"]
    table["noisy"] = flag(table, threshold)
    return table[list(NOISY_COLUMNS)].sort_values(["score", "row_id"], ascending=[False, True], ignore_index=True)


def pseudo_table(ensemble: pd.DataFrame) -> pd.DataFrame:
    """Soft targets (``PSEUDO_COLUMNS``) for every row the ensemble covers, labelled or not; rows sum to one."""
    table = ensemble[list(PSEUDO_COLUMNS)].copy()
    values = table[list(SEVERITY_COLUMNS)].to_numpy(float)
    table[list(SEVERITY_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return table


def counts_per_condition(noisy: pd.DataFrame) -> pd.DataFrame:
    """Per condition: labelled rows scored, rows flagged noisy and their share, and the flags per given label."""
    rows = []
    for condition in CONDITIONS:
        part = noisy[noisy["condition"] == condition]
        flagged = part[part["noisy"].astype(bool)]
        per_label = {f"noisy {name}": int((flagged["label"] == k).sum()) for k, name in enumerate(SEVERITIES)}
        share = len(flagged) / len(part) if len(part) else np.nan
        rows.append({"condition": condition, "scored": len(part), "noisy": len(flagged), "share": share, **per_label})
    table = pd.DataFrame(rows)
    total = table.drop(columns=["condition", "share"]).sum()
    return pd.concat(
        [table, pd.DataFrame([{"condition": "all", **total, "share": total["noisy"] / max(total["scored"], 1)}])],
        ignore_index=True,
    )


# --- round 2 inputs ------------------------------------------------------------------------------
def noisy_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Label cells to ignore as ``study_id, column``: the flagged rows of a ``noisy_table``, or every row of the
    solution's ``noisy_target_level_threshold0.85.csv`` (columns ``study_id, target, level``)."""
    if "noisy" in table:
        table = table[table["noisy"].astype(bool)]
    condition = table["condition"] if "condition" in table else table["target"]
    cells = pd.DataFrame({"study_id": table["study_id"].astype(np.int64), "column": condition + "_" + table["level"]})
    unknown = sorted(set(cells["column"]) - set(_CELLS))
    if unknown:  # the solution's file blanks cells by name: a misspelt one would silently remove nothing
        raise ValueError(f"noisy-label table names columns that train.csv does not have: {unknown[:5]}")
    return cells


def ignore_noisy(targets: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``targets`` with the ``cells`` of its studies set to ``IGNORE_INDEX``, and per condition how many labelled
    cells that dropped (``condition, dropped``)."""
    out = targets.reset_index(drop=True)
    index = {int(s): i for i, s in enumerate(out["study_id"])}
    dropped = dict.fromkeys(CONDITIONS, 0)
    for study, column in zip(cells["study_id"], cells["column"], strict=True):
        if int(study) in index and out.at[index[int(study)], column] != IGNORE_INDEX:
            out.at[index[int(study)], column] = IGNORE_INDEX
            dropped[_CELLS[column][0]] += 1
    return out, pd.DataFrame({"condition": list(dropped), "dropped": list(dropped.values())})


def fold_coverage(folds: pd.DataFrame, ensemble: pd.DataFrame, round2_folds: Sequence[int]) -> pd.DataFrame:
    """Per round-2 fold: its training studies and how many of them the OOF ensemble covers (the only ones whose
    labels can be screened and that get pseudo labels)."""
    covered = set(ensemble["study_id"])
    rows = []
    for fold in round2_folds:
        training = set(folds.loc[folds["fold"] != fold, "study_id"])
        rows.append({"fold": fold, "training_studies": len(training), "with_oof": len(training & covered)})
    return pd.DataFrame(rows, columns=["fold", "training_studies", "with_oof"])


def copy_stage1(source: Paths, target: Paths) -> list[Path]:
    """Copy the stage-1 checkpoints (weights and sidecars) of ``source`` beside round 2's stage-2 ones, so its models
    folder is complete for inference (notebook 04 with ``RUN``) and for publishing as a weights dataset."""
    copied = []
    target.models_dir.mkdir(parents=True, exist_ok=True)
    for weights in source.checkpoints():
        sidecar = weights.with_suffix(".json")
        if sidecar.exists() and json.loads(sidecar.read_text())["config"]["model"] in config.STAGE1_MODELS:
            for path in (weights, sidecar):
                shutil.copy2(path, target.models_dir / path.name)
            copied.append(target.models_dir / weights.name)
    return copied


# --- checks --------------------------------------------------------------------------------------
def detection(noisy: pd.DataFrame, flips: pd.DataFrame, threshold: float | None = None) -> dict[str, float]:
    """Precision and recall of the flagged rows (at ``threshold``, else the table's ``noisy`` column) against known
    flips. Recall counts only the flips the ensemble scored (``flipped_scored``); ``flipped`` counts all of them."""
    flagged_mask = noisy["noisy"].astype(bool) if threshold is None else flag(noisy, threshold)
    flagged = set(noisy.loc[flagged_mask, "row_id"])
    flipped = set(flips["row_id"])
    scored = flipped & set(noisy["row_id"])
    hits = len(flagged & flipped)
    return {
        "threshold": np.nan if threshold is None else threshold,
        "flagged": len(flagged),
        "flipped": len(flipped),
        "flipped_scored": len(scored),
        "true_positives": hits,
        "precision": hits / len(flagged) if flagged else np.nan,
        "recall": hits / len(scored) if scored else np.nan,
    }


def detection_curve(noisy: pd.DataFrame, flips: pd.DataFrame, thresholds: Iterable[float]) -> pd.DataFrame:
    """``detection`` at several thresholds, one row each: how to pick a threshold for a given noise level."""
    return pd.DataFrame([detection(noisy, flips, t) for t in thresholds])


def true_targets(targets: pd.DataFrame, flips: pd.DataFrame) -> pd.DataFrame:
    """A targets table with the known flips undone: the labels the images show."""
    out = targets.reset_index(drop=True)
    index = {int(s): i for i, s in enumerate(out["study_id"])}
    for flip in flips.itertuples():
        if int(flip.study_id) in index:
            out.at[index[int(flip.study_id)], f"{flip.condition}_{flip.level}"] = SEVERITIES.index(flip.true)
    return out


def cv_compare(
    before: pd.DataFrame,
    after: pd.DataFrame,
    labels: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """The competition score of two rounds' OOF predictions on the same studies, per preset and for the routed
    ensemble, against each named targets table (e.g. the given labels and, on synthetic data, the true ones).

    Both frames need ``study_id, row_id, preset`` + probabilities; only the studies both rounds predicted count."""
    studies = set(before["study_id"]) & set(after["study_id"])
    before, after = before[before["study_id"].isin(studies)], after[after["study_id"].isin(studies)]
    models = {
        name: (before[before["preset"] == name], after[after["preset"] == name]) for name in after["preset"].unique()
    }
    models["ensemble (routed)"] = (oof_ensemble(before), oof_ensemble(after))
    rows = []
    for name, (one, two) in models.items():
        for label_name, targets in labels.items():
            first, second = score_predictions(one, targets).get("score"), score_predictions(two, targets).get("score")
            if first is None or second is None:
                continue
            rows.append(
                {"model": name, "labels": label_name, "before": first, "after": second, "change": second - first}
            )
    return pd.DataFrame(rows, columns=["model", "labels", "before", "after", "change"])


def write_tables(
    paths: Paths, configs: Sequence[TrainConfig], threshold: float = DEFAULT_THRESHOLD
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The noisy-label and pseudo-label tables of a work folder's round-1 OOF (every fold found), saved to
    ``tables/noisy_labels.csv`` and ``tables/pseudo_labels.csv``."""
    folds = sorted(load_table(paths, "folds")["fold"].unique())
    ensemble = oof_ensemble(load_oof(paths, configs, folds), configs)
    noisy = save_table(paths, "noisy_labels", noisy_table(ensemble, load_table(paths, "targets"), threshold))
    return noisy, save_table(paths, "pseudo_labels", pseudo_table(ensemble))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the noisy-label and pseudo-label tables from round-1 OOF.")
    parser.add_argument("--presets", nargs="+", required=True, help="the stage-2 presets of round 1")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--profile", default="auto", help="the profile round 1 used (seeds come from the presets)")
    parser.add_argument("--data-dir", default="", help="competition-layout folder (for label_flips.csv)")
    parser.add_argument("--work-dir", default="", help="round 1's work folder")
    parameters.add_override_arguments(parser)  # round 1's overrides
    args = parser.parse_args(argv)
    paths = Paths.resolve(args.data_dir, args.work_dir)
    try:
        overrides = parameters.parsed_overrides(args)
    except config.ConfigError as error:
        parser.error(str(error))
    configs = [presets.preset(name, presets.resolve_profile(args.profile), overrides) for name in args.presets]
    noisy, pseudo = write_tables(paths, configs, args.threshold)
    print(counts_per_condition(noisy).round(3).to_string(index=False))
    if paths.data_file(LABEL_FLIPS_CSV).exists():
        print(detection(noisy, pd.read_csv(paths.data_file(LABEL_FLIPS_CSV))))
    print(f"{paths.table('noisy_labels')}: {int(noisy['noisy'].sum())} noisy of {len(noisy)} scored labels")
    print(f"{paths.table('pseudo_labels')}: {len(pseudo)} rows of {pseudo['study_id'].nunique()} studies")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def round2_inputs(cfg: TrainConfig, targets: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Training targets with the config's noisy labels ignored (the count per condition is printed), and its pseudo
    labels; unchanged targets and None in round 1 (both fields "")."""
    noisy_path, pseudo_path = getattr(cfg, "noisy_labels", ""), getattr(cfg, "pseudo_labels", "")
    if noisy_path:
        cells = noisy_cells(read_table(noisy_path, "noisy_labels"))
        targets, dropped = ignore_noisy(targets, cells)
        per_condition = ", ".join(f"{c} {n}" for c, n in zip(dropped["condition"], dropped["dropped"], strict=True))
        print(f"{cfg.name} f{fold}: {int(dropped['dropped'].sum())} noisy training labels ignored ({per_condition})")
    pseudo = read_table(pseudo_path, "pseudo_labels") if pseudo_path else None
    return targets, pseudo
