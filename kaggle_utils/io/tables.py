"""The hand-off tables of the pipeline: series index, folds, targets and keypoints, each schema-checked (the
competition's own files are read by ``competition``).

The solution read these from a metadata dataset it did not build; here they are built from the
competition files and written to ``WORK_DIR/tables``. The solution's own metadata files are read by their
names and columns when present (``coords_v7.csv`` or ``coords_rsna_improved.csv`` for corrected keypoints,
``metadata.csv`` for its folds, when asked), and a file with other columns is named with the columns expected.
Keypoints are given on the stored images; where a series' images are turned on reading (``geometry.Turn``), its
keypoints are turned with them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.core import paths as P
from kaggle_utils.core.config import RENAMED, PreprocessConfig
from kaggle_utils.core.constants import (
    CONDITION_TITLES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVEL_SLUGS,
    SEVERITY_COLUMNS,
    condition_family,
)
from kaggle_utils.core.labels import sort_level_points
from kaggle_utils.core.views import VIEWS, view_named
from kaggle_utils.io.competition import TableError, drop_excluded, read_csv, series_table, targets_table
from kaggle_utils.io.dicom import SeriesError, Turn, dicom_files, file_turn
from kaggle_utils.io.point_gaps import ESTIMATED, estimated_series, fill_foramina, fill_levels

SCHEMAS: dict[str, tuple[str, ...]] = {
    "series": ("study_id", "series_id", "series_description", "view", "split", "fold"),
    "folds": ("study_id", "fold"),
    "targets": ("study_id", *LABEL_COLUMNS),
    "keypoints": ("study_id", "series_id", "view", "level", "side", "relative_x", "relative_y", "source"),
    # one row per Axial T2 slice (kaggle_utils/axial.py): the nearest level and whether it is that level's slice
    "axial_levels": (
        "study_id",
        "series_id",
        "instance_number",
        "block",
        "index",
        "level",
        "distance_mm",
        "assigned",
        "point_x",
        "point_y",
    ),
    # the axial samples: a level's assigned slice and its two subarticular points carried onto it (labelled False: the
    # side estimated from the other one, see preprocessing/axial_samples.py)
    "axial_keypoints": (
        "study_id",
        "series_id",
        "level",
        "instance_number",
        "side",
        "relative_x",
        "relative_y",
        "labelled",
    ),
    # per study, what the axial samples kept and left out (preprocessing/axial_samples.py)
    "axial_checks": ("study_id", "samples", "one_sided", "far_points", "dropped"),
    # round 2 (kaggle_utils/denoise.py, notebooks/05_denoise)
    "noisy_labels": ("study_id", "row_id", "condition", "level", "label", "prob_label", "suggested", "score", "noisy"),
    "pseudo_labels": ("study_id", "row_id", *SEVERITY_COLUMNS),
}
"""Columns every table must have (extra columns are allowed)."""


KEYPOINT_FILES: dict[str, tuple[str, ...]] = {
    P.COORDS_V7_CSV: ("series_id", "level", "side", "relative_x", "relative_y"),
    P.COORDS_IMPROVED_CSV: ("series_id", "condition", "level", "side", "relative_x", "relative_y"),
}
"""Corrected keypoint files by name, in the order they are looked for, and the columns read from each."""

SOLUTION_FOLD_COLUMNS = ("study_id", "fold")
"""Columns read from the solution's ``metadata.csv`` (one row per series, all of a study's in one fold)."""


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
    return check_schema(name, pd.read_csv(path).rename(columns=RENAMED))  # a table of an earlier version reads too


def read_metadata(path: Path, expected: tuple[str, ...], what: str) -> pd.DataFrame:
    """A metadata CSV that must have ``expected`` columns; otherwise the error names the file, what it should
    be and the columns expected, lacking and found."""
    table = pd.read_csv(path)
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise TableError(
            f"{path} is not {what}: expected columns {', '.join(expected)}; it lacks {', '.join(missing)} "
            f"(its columns: {', '.join(map(str, table.columns[:12]))})"
        )
    return table


def metadata_path(paths: P.Paths, value: str, field: str) -> Path:
    """The file a config field names: a path, or a bare file name looked for in ``DATA_DIR`` and in the
    attached Kaggle datasets."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    found = P.find_metadata(value, paths.data_dir) if path.name == value else None  # a bare name: look for it
    if found is None:
        raise TableError(
            f"{field}={value!r}: no such file, nor a file of that name in {paths.data_dir} or an attached dataset"
        )
    return found


# --- targets and folds ---------------------------------------------------------------------------
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


def solution_folds(path: Path, targets: pd.DataFrame, n_folds: int) -> pd.DataFrame:
    """Per-study folds of the solution's ``metadata.csv``, so fold-by-fold figures compare with its own.

    Every training study must have one fold there, and the file must have ``n_folds`` of them.
    """
    meta = read_metadata(path, SOLUTION_FOLD_COLUMNS, f"the solution's {P.SOLUTION_METADATA_CSV}")
    per_study = meta.groupby("study_id")["fold"].agg(["min", "max"])
    split = per_study.index[per_study["min"] != per_study["max"]]
    if len(split):
        raise TableError(f"{path}: {len(split)} studies have series in more than one fold: {list(split[:5])}")
    fold_of = per_study["min"].astype(int)
    missing = targets.loc[~targets["study_id"].isin(fold_of.index), "study_id"]
    if len(missing):
        raise TableError(f"{path} gives no fold to {len(missing)} training studies: {missing.head(5).tolist()}")
    folds = pd.DataFrame({"study_id": targets["study_id"].to_numpy(), "fold": targets["study_id"].map(fold_of)})
    if folds["fold"].nunique() != n_folds:
        raise TableError(f"{path} has folds {sorted(folds['fold'].unique())}, but n_folds={n_folds}")
    return folds


# --- keypoints -----------------------------------------------------------------------------------
def build_training_tables(paths: P.Paths, cfg: PreprocessConfig) -> dict[str, pd.DataFrame]:
    """Series (with folds), targets and keypoints of the training split, saved to ``WORK_DIR/tables``.

    Folds come from ``cfg.folds_file`` (the solution's ``metadata.csv``) when set; otherwise they are made once
    and reused (``load_or_make_folds``). Excluded studies and series are left out.
    """
    series = series_table(paths, "train")
    labels = drop_excluded(read_csv(paths, P.TRAIN_CSV))
    unseen = sorted(set(labels["study_id"]) - set(series["study_id"]))
    if unseen:
        warnings.warn(
            f"{len(unseen)} studies of {P.TRAIN_CSV} have no sagittal series to read (none listed in "
            f"{P.TRAIN_SERIES_CSV}, or none with an image folder) and are left out of training: {unseen[:10]}"
            + (" ..." if len(unseen) > 10 else ""),
            stacklevel=2,
        )
    targets = targets_table(labels[labels["study_id"].isin(series["study_id"])])
    if cfg.folds_file:
        source = metadata_path(paths, cfg.folds_file, "folds_file")
        folds = save_table(paths, "folds", solution_folds(source, targets, cfg.n_folds))
        print(f"folds of {source}: {folds.groupby('fold').size().to_dict()} studies per fold")
    else:
        folds = load_or_make_folds(paths, targets, cfg.n_folds, cfg.fold_seed)
    series["fold"] = series["study_id"].map(folds.set_index("study_id")["fold"])
    keypoints = keypoints_table(paths, series, cfg.keypoints_file)
    built = {"series": series, "targets": targets, "keypoints": keypoints}
    return {name: save_table(paths, name, table) for name, table in built.items()}


def keypoints_table(paths: P.Paths, series: pd.DataFrame, keypoints_file: str = "") -> pd.DataFrame:
    """Two points per level per sagittal series, from a corrected keypoint file (``keypoints_file``, else the
    first of ``KEYPOINT_FILES`` found by name), else derived from the competition coordinates. Series without a
    complete set of 10 points are left out with a warning."""
    source = corrected_keypoints_file(paths, keypoints_file)
    if source is not None:
        table = _turned(paths, _from_corrected(read_keypoint_file(source), series, source.name))
    else:
        warnings.warn(
            f"no {' or '.join(KEYPOINT_FILES)} in {paths.data_dir} or an attached dataset: keypoints come from "
            f"{P.TRAIN_COORDINATES_CSV}, whose T2 series mark only the spinal canal; each front-of-disc point is "
            "placed 0.9 level spacings in front of it, square to the line of the canal points. Corrected "
            "coordinates of both points give better T2 crops (see the README)",
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


def corrected_keypoints_file(paths: P.Paths, keypoints_file: str = "") -> Path | None:
    """The corrected keypoint file to read: the one named, else the first of ``KEYPOINT_FILES`` found."""
    if keypoints_file:
        return metadata_path(paths, keypoints_file, "keypoints_file")
    found = (P.find_metadata(name, paths.data_dir) for name in KEYPOINT_FILES)
    return next((path for path in found if path is not None), None)


def read_keypoint_file(path: Path) -> pd.DataFrame:
    """A corrected keypoint file in either layout: per-condition rows (``coords_rsna_improved.csv``) when it has a
    ``condition`` column, else 10 rows per series (``coords_v7.csv``)."""
    header = pd.read_csv(path, nrows=0).columns
    layout = P.COORDS_IMPROVED_CSV if "condition" in header else P.COORDS_V7_CSV
    expected = " or ".join(f"{name} ({', '.join(columns)})" for name, columns in KEYPOINT_FILES.items())
    return read_metadata(path, KEYPOINT_FILES[layout], f"a keypoint file like {expected}")


_LEVEL_OF = {**{name: name for name in LEVEL_NAMES}, **dict(zip(LEVEL_SLUGS, LEVEL_NAMES, strict=True))}
"""Level strings of the keypoint files (``L1/L2`` or ``l1_l2``) -> ``LEVEL_NAMES``."""


def _from_corrected(coords: pd.DataFrame, series: pd.DataFrame, source: str) -> pd.DataFrame:
    unknown = sorted(set(coords["level"].astype(str)) - set(_LEVEL_OF))
    if unknown:
        raise TableError(f"{source}: unknown levels {unknown[:5]}; expected {', '.join(LEVEL_NAMES)}")
    columns = ["series_id", "level", "side", "relative_x", "relative_y"]
    table = coords[columns + (["condition"] if "condition" in coords else [])].merge(
        series[["study_id", "series_id", "view"]], on="series_id"
    )
    table["level"] = table["level"].astype(str).map(_LEVEL_OF)
    if "condition" in table:  # one view's points only: a T2 series also carries none of the T1's, and so on
        family = table["condition"].str.lower().str.replace(" ", "_").map(condition_family)
        table = table[family == table["view"].map({name: v.family for name, v in VIEWS.items()})]
    table["source"] = source
    return table[list(SCHEMAS["keypoints"])].sort_values(["series_id", "level", "side"]).reset_index(drop=True)


def _turned(paths: P.Paths, table: pd.DataFrame) -> pd.DataFrame:
    """Relative keypoints of a corrected file, given on the stored images, moved to the turned ones where a series'
    images are turned on reading (``dicom.Turn``; the others stay as written)."""
    table = table.copy()
    for series_id, rows in table.groupby("series_id").groups.items():
        study_id = int(table.at[rows[0], "study_id"])
        turn = _series_turn(paths.series_dir("train", study_id, int(series_id)))
        if turn is None or turn.none:
            continue
        stored_x = table.loc[rows, "relative_x"].to_numpy(float) * turn.cols
        stored_y = table.loc[rows, "relative_y"].to_numpy(float) * turn.rows
        x, y = turn.point(stored_x, stored_y)
        height, width = turn.shape
        table.loc[rows, "relative_x"], table.loc[rows, "relative_y"] = x / width, y / height
    return table


def _series_turn(folder: Path) -> Turn | None:
    """How a series' images are turned on reading, from its middle file (a stray localiser stored as the first
    instance is not it), else the first other one that can be read; None when none can."""
    try:
        files = dicom_files(folder)
    except SeriesError:
        return None
    middle = len(files) // 2
    return _first_turn(files[middle:] + files[:middle])


def _first_turn(files: Iterable[Path]) -> Turn | None:
    """``dicom.file_turn`` of the first of ``files`` that can be read; None when none can."""
    for path in files:
        try:
            return file_turn(path)
        except SeriesError:
            continue
    return None


def _from_competition(paths: P.Paths, coords: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    coords = coords.merge(series[["study_id", "series_id", "view"]], on=["study_id", "series_id"])
    rows, problems = [], {kind: [] for kind in _PROBLEMS}
    for (study_id, series_id, view), group in coords.groupby(["study_id", "series_id", "view"]):
        named = f"study {study_id} series {series_id}"
        turn = _labelled_turn(paths.series_dir("train", study_id, series_id), group["instance_number"])
        if turn is None:
            problems["unread"].append(named)
            continue
        inside = group["x"].between(0, turn.cols) & group["y"].between(0, turn.rows)
        problems["outside"] += [f"{named} {r.level} ({r.condition})" for r in group[~inside].itertuples()]
        found = _series_points(group[inside], view, turn, study_id, series_id)
        if not found:
            problems["few"].append(named)
        rows += found
    for kind, names in problems.items():
        if names:
            more = " ..." if len(names) > 10 else ""
            warnings.warn(f"{len(names)} {_PROBLEMS[kind]}: {', '.join(names[:10])}{more}", stacklevel=2)
    table = pd.DataFrame(rows, columns=list(SCHEMAS["keypoints"]))
    guessed = estimated_series(table)
    if guessed:
        n_points = int(table["source"].str.endswith(ESTIMATED).sum())
        warnings.warn(
            f"{len(guessed)} series miss {n_points} points in {P.TRAIN_COORDINATES_CSV}: estimated from their other "
            "points (a foramen from the other side's, a level from its neighbours; io/point_gaps.py), so that stage 2 "
            f"crops them; the localisers neither train nor are scored on them: {sorted(guessed)[:10]}",
            stacklevel=2,
        )
    return table.sort_values(["series_id", "level", "side"]).reset_index(drop=True)


_PROBLEMS = {
    "unread": "series have labelled points but none of their labelled instances can be read, so no keypoints (and "
    "no localiser sample)",
    "outside": "labelled points lie outside their image and are left out (estimated as missing ones are)",
    "few": "series have labelled points at fewer than two levels, too few to place the others, so no keypoints",
}
"""What ``_from_competition`` says of the series whose labelled points it cannot use as they are."""


def _labelled_turn(folder: Path, instances: pd.Series) -> Turn | None:
    """How the first labelled instance of a series that can be read is turned on reading (``dicom.Turn``: its stored
    size, and the turn to its plane's usual orientation); None when none can be read (a missing, empty or corrupt
    file: the coordinates are of that image, so no other file will do)."""
    return _first_turn(folder / f"{instance}.dcm" for instance in dict.fromkeys(int(i) for i in instances))


def _series_points(group: pd.DataFrame, view: str, turn: Turn, study_id: int, series_id: int) -> list:
    """A series' keypoint rows from its labelled points, turned as its images are (relative to the turned size), the
    points it misses estimated (``point_gaps``); none when fewer than two of its levels are labelled."""
    x, y = turn.point(group["x"].to_numpy(float), group["y"].to_numpy(float))
    group = group.assign(x=x, y=y).drop_duplicates(["condition", "level"])
    group = group[group["level"].isin(LEVEL_NAMES)]
    if view_named(view).keypoints_from == "foramina":
        labelled = np.stack([_by_level(group, CONDITION_TITLES[c]) for c in CONDITIONS[1:3]], axis=1)  # L, R
        points = fill_foramina(labelled)
    else:
        canal = _by_level(group, CONDITION_TITLES[CONDITIONS[0]])
        labelled = np.stack([canal, canal], axis=1)
        known = fill_levels(canal)
        fronts = None if known is None else known + DISC_DEPTH * _level_spacing(known) * _anterior_normals(known)
        points = None if known is None else np.stack([fronts, known], axis=1)  # L: front of the disc, R: canal
    if points is None:
        return []
    height, width = turn.shape
    missing = ~np.isfinite(labelled).all(axis=2)
    return [
        (study_id, series_id, view, level, side, px / width, py / height, _source(gap))
        for level, pair, gaps in zip(LEVEL_NAMES, points, missing, strict=True)
        for side, (px, py), gap in zip(("L", "R"), pair, gaps, strict=True)
    ]


def _source(estimated: bool) -> str:
    return P.TRAIN_COORDINATES_CSV + (ESTIMATED if estimated else "")


def _by_level(group: pd.DataFrame, condition: str) -> np.ndarray:
    """(n_levels, 2) pixel x, y of one condition's points, NaN where a level has none."""
    points = np.full((len(LEVEL_NAMES), 2), np.nan)
    for row in group[group["condition"] == condition].itertuples():
        points[LEVEL_NAMES.index(row.level)] = (row.x, row.y)
    return points


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


def points_frame(study_id: int, series_id: int, view: str, points: np.ndarray, source: str) -> pd.DataFrame:
    """Keypoint-table rows of one series from a (5, 2, 2) array (first point of a level named L, second R)."""
    rows = [
        (study_id, series_id, view, level, side, float(x), float(y), source)
        for level, pair in zip(LEVEL_NAMES, points, strict=True)
        for side, (x, y) in zip(("L", "R"), pair, strict=True)
    ]
    return pd.DataFrame(rows, columns=list(SCHEMAS["keypoints"]))


def points_by_series(keypoints: pd.DataFrame) -> dict[int, np.ndarray]:
    """Series id -> (5, 2, 2) relative keypoints, for every series of a keypoint table."""
    return {int(s): series_points(keypoints, s) for s in keypoints["series_id"].unique()}
