"""The hand-off tables of the pipeline: series index, folds, targets and keypoints, each schema-checked.

The solution read these from a metadata dataset it did not build; here they are built from the
competition files (plus ``coords_pretrain.csv`` when present) and written to ``WORK_DIR/tables``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from kaggle_utils import paths as P
from kaggle_utils.constants import (
    CONDITION_TITLES,
    CONDITIONS,
    EXCLUDED_SERIES,
    EXCLUDED_STUDIES,
    IGNORE_INDEX,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    PLANES,
    SEVERITIES,
    SEVERITY_COLUMNS,
)
from kaggle_utils.dicom import read_header
from kaggle_utils.preprocess import sort_level_points

SCHEMAS: dict[str, tuple[str, ...]] = {
    "series": ("study_id", "series_id", "series_description", "plane", "split", "fold"),
    "folds": ("study_id", "fold"),
    "targets": ("study_id", *LABEL_COLUMNS),
    "keypoints": ("study_id", "series_id", "plane", "level", "side", "relative_x", "relative_y", "source"),
    # round 2 (kaggle_utils/denoise.py, notebooks/05_denoise)
    "noisy_labels": ("study_id", "row_id", "condition", "level", "label", "prob_label", "suggested", "score", "noisy"),
    "pseudo_labels": ("study_id", "row_id", *SEVERITY_COLUMNS),
}
"""Columns every table must have (extra columns are allowed)."""

PLANE_OF_DESCRIPTION = {description: plane for plane, description in PLANES.items()}


class TableError(ValueError):
    """A table that is missing or does not match its schema."""


def check_schema(name: str, table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in SCHEMAS[name] if c not in table.columns]
    if missing:
        raise TableError(f"table {name!r} lacks columns {missing}")
    return table


def save_table(paths: P.Paths, name: str, table: pd.DataFrame) -> pd.DataFrame:
    check_schema(name, table)
    paths.tables_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(paths.table(name), index=False)
    return table


def load_table(paths: P.Paths, name: str) -> pd.DataFrame:
    """A table written by an earlier notebook; a clear error says which notebook to run when it is missing."""
    path = paths.table(name)
    if not path.exists():
        raise TableError(f"{path} does not exist: run notebooks/01_preprocess first")
    return check_schema(name, pd.read_csv(path))


def read_csv(paths: P.Paths, name: str) -> pd.DataFrame:
    path = paths.data_file(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {paths.data_dir} a folder in the competition layout?")
    return pd.read_csv(path)


# --- series --------------------------------------------------------------------------------------
def series_table(paths: P.Paths, split: str) -> pd.DataFrame:
    """Sagittal series of a split (``train`` or ``test``); training drops the known bad ids, saying why."""
    table = read_csv(paths, P.TRAIN_SERIES_CSV if split == "train" else P.TEST_SERIES_CSV)
    table = table[table["series_description"].isin(PLANE_OF_DESCRIPTION)].copy()
    if split == "train":
        table = drop_excluded(table)
    table["plane"] = table["series_description"].map(PLANE_OF_DESCRIPTION)
    table["split"] = split
    table["fold"] = -1
    present = [
        paths.series_dir(split, s, r).is_dir() for s, r in zip(table["study_id"], table["series_id"], strict=True)
    ]
    if not all(present):
        absent = table.loc[~np.array(present), ["study_id", "series_id"]].to_numpy().tolist()
        warnings.warn(f"{len(absent)} {split} series have no image folder and are skipped: {absent[:5]}", stacklevel=2)
        table = table[np.array(present)]
    return table.reset_index(drop=True)


def drop_excluded(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of excluded studies and series removed (``constants.EXCLUDED_*`` hold the reasons)."""
    bad = table["study_id"].isin(EXCLUDED_STUDIES) | (
        table["series_id"].isin(EXCLUDED_SERIES) if "series_id" in table else False
    )
    if bad.any():
        print(f"excluded {int(bad.sum())} rows of known bad studies/series (reasons in constants.EXCLUDED_*)")
    return table[~bad]


# --- targets and folds ---------------------------------------------------------------------------
def targets_table(labels: pd.DataFrame) -> pd.DataFrame:
    """``study_id`` + the 25 label columns as class indices (``IGNORE_INDEX`` where missing)."""
    codes = {name: k for k, name in enumerate(SEVERITIES)}
    out = pd.DataFrame({"study_id": labels["study_id"].astype(np.int64)})
    for column in LABEL_COLUMNS:
        out[column] = labels[column].map(codes).fillna(IGNORE_INDEX).astype(int) if column in labels else IGNORE_INDEX
    return out


def make_folds(targets: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds grouped by study and stratified on severity: studies sorted by their count of severe and moderate
    labels (ties shuffled) are dealt to the folds in turn."""
    values = targets[list(LABEL_COLUMNS)].to_numpy()
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(targets)), (values == 1).sum(1), (values == 2).sum(1)))
    folds = np.empty(len(targets), int)
    folds[order] = np.arange(len(targets)) % n_folds
    return pd.DataFrame({"study_id": targets["study_id"].to_numpy(), "fold": folds})


def load_or_make_folds(paths: P.Paths, targets: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Reuse saved folds when they cover exactly these studies (so reruns and later notebooks agree)."""
    path = paths.table("folds")
    if path.exists():
        saved = load_table(paths, "folds")
        if set(saved["study_id"]) == set(targets["study_id"]) and saved["fold"].nunique() == n_folds:
            return saved
        print(f"{path} does not match the current studies or n_folds={n_folds}; making new folds")
    return save_table(paths, "folds", make_folds(targets, n_folds, seed))


# --- keypoints -----------------------------------------------------------------------------------
def build_training_tables(paths: P.Paths, n_folds: int, fold_seed: int) -> dict[str, pd.DataFrame]:
    """Series (with folds), targets and keypoints of the training split, saved to ``WORK_DIR/tables``.

    Folds are made once and reused (``load_or_make_folds``); excluded studies and series are left out.
    """
    series = series_table(paths, "train")
    labels = drop_excluded(read_csv(paths, P.TRAIN_CSV))
    targets = targets_table(labels[labels["study_id"].isin(series["study_id"])])
    folds = load_or_make_folds(paths, targets, n_folds, fold_seed)
    series["fold"] = series["study_id"].map(folds.set_index("study_id")["fold"])
    built = {"series": series, "targets": targets, "keypoints": keypoints_table(paths, series)}
    return {name: save_table(paths, name, table) for name, table in built.items()}


def keypoints_table(paths: P.Paths, series: pd.DataFrame) -> pd.DataFrame:
    """Two points per level per sagittal series, from ``coords_pretrain.csv`` when present, else derived from
    the competition coordinates. Series without a complete set of 10 points are left out with a warning."""
    if paths.data_file(P.COORDS_PRETRAIN_CSV).exists():
        table = _from_pretrain(read_csv(paths, P.COORDS_PRETRAIN_CSV), series)
    else:
        warnings.warn(
            f"{P.COORDS_PRETRAIN_CSV} not found in {paths.data_dir}: keypoints come from {P.TRAIN_COORDINATES_CSV}, "
            "whose T2 series mark only the spinal canal; each front-of-disc point is placed 0.9 level spacings in "
            "front of it, square to the line of the canal points. Corrected coordinates of both points give "
            "better T2 crops (see the README)",
            stacklevel=2,
        )
        table = _from_competition(paths, read_csv(paths, P.TRAIN_COORDINATES_CSV), series)
    counts = table.groupby("series_id").size()
    incomplete = counts[counts != 2 * len(LEVEL_NAMES)].index
    if len(incomplete):
        warnings.warn(
            f"{len(incomplete)} series without 10 keypoints are left out: {list(incomplete[:5])}", stacklevel=2
        )
    return table[~table["series_id"].isin(incomplete)].reset_index(drop=True)


def _from_pretrain(coords: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    table = coords[["series_id", "level", "side", "relative_x", "relative_y"]].merge(
        series[["study_id", "series_id", "plane"]], on="series_id"
    )
    table["source"] = P.COORDS_PRETRAIN_CSV
    return table[list(SCHEMAS["keypoints"])].sort_values(["series_id", "level", "side"]).reset_index(drop=True)


def _from_competition(paths: P.Paths, coords: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    coords = coords.merge(series[["study_id", "series_id", "plane"]], on=["study_id", "series_id"])
    rows = []
    for (study_id, series_id, plane), group in coords.groupby(["study_id", "series_id", "plane"]):
        first = group.iloc[0]
        header = read_header(paths.series_dir("train", study_id, series_id) / f"{int(first.instance_number)}.dcm")
        width, height = int(header.Columns), int(header.Rows)
        rows += _series_points(group, plane, width, height, study_id, series_id)
    table = pd.DataFrame(rows, columns=list(SCHEMAS["keypoints"]))
    return table.sort_values(["series_id", "level", "side"]).reset_index(drop=True)


def _series_points(group: pd.DataFrame, plane: str, width: int, height: int, study_id: int, series_id: int) -> list:
    source = P.TRAIN_COORDINATES_CSV
    if plane == "t1":
        sides = {CONDITION_TITLES[CONDITIONS[1]]: "L", CONDITION_TITLES[CONDITIONS[2]]: "R"}
        found = group[group["condition"].isin(sides)]
        return [
            (study_id, series_id, plane, r.level, sides[r.condition], r.x / width, r.y / height, source)
            for r in found.itertuples()
        ]
    spinal = group[group["condition"] == CONDITION_TITLES[CONDITIONS[0]]].sort_values("level")
    if len(spinal) < 2:
        return []
    canal = spinal[["x", "y"]].to_numpy(float)
    fronts = canal + DISC_DEPTH * _level_spacing(canal) * _anterior_normals(canal)
    rows = []
    for level, (fx, fy), (bx, by) in zip(spinal["level"], fronts, canal, strict=True):
        rows.append((study_id, series_id, plane, level, "L", fx / width, fy / height, source))
        rows.append((study_id, series_id, plane, level, "R", bx / width, by / height, source))
    return rows


DISC_DEPTH = 0.9
"""Front-to-back depth of a lumbar disc in level spacings, for T2 series without a front-of-disc point."""


def _level_spacing(points: np.ndarray) -> float:
    """Median distance between successive levels' points (pixels)."""
    return float(np.median(np.linalg.norm(np.diff(points, axis=0), axis=1)))


def _anterior_normals(canal: np.ndarray) -> np.ndarray:
    """(n, 2) unit vectors square to the spine at each level's canal point, pointing to the front (smaller x).

    The spine's direction at a level is that of its neighbours' points (one-sided at the ends), so the disc
    lines follow the lordosis instead of lying flat, and the T2 crops are turned like the solution's.
    """
    tangent = np.gradient(canal, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True).clip(min=1e-9)
    normal = np.c_[tangent[:, 1], -tangent[:, 0]]
    return np.where(normal[:, :1] > 0, -normal, normal)


def series_points(keypoints: pd.DataFrame, series_id: int) -> np.ndarray:
    """(5, 2, 2) relative (x, y) of one series, levels in anatomical order, points by x within a level."""
    rows = keypoints[keypoints["series_id"] == series_id].sort_values(["level", "side"])
    if len(rows) != 2 * len(LEVEL_NAMES):
        raise TableError(f"series {series_id} has {len(rows)} keypoints, expected {2 * len(LEVEL_NAMES)}")
    return sort_level_points(rows[["relative_x", "relative_y"]].to_numpy().reshape(len(LEVEL_NAMES), 2, 2))


def points_frame(study_id: int, series_id: int, plane: str, points: np.ndarray, source: str) -> pd.DataFrame:
    """Keypoint-table rows of one series from a (5, 2, 2) array (first point of a level named L, second R)."""
    rows = [
        (study_id, series_id, plane, level, side, float(x), float(y), source)
        for level, pair in zip(LEVEL_NAMES, points, strict=True)
        for side, (x, y) in zip(("L", "R"), pair, strict=True)
    ]
    return pd.DataFrame(rows, columns=list(SCHEMAS["keypoints"]))


def points_by_series(keypoints: pd.DataFrame) -> dict[int, np.ndarray]:
    """Series id -> (5, 2, 2) relative keypoints, for every series of a keypoint table."""
    return {int(s): series_points(keypoints, s) for s in keypoints["series_id"].unique()}
