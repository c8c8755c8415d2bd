"""The competition's own files as given: each CSV read row by row (ids as integers; a row that does not parse named
by file, line and study and left out), the series each split lists with their views, the studies a submission must
cover, and the training labels as class indices. The files are the competition's; every fault found in them is said
once, and costs only the rows it is in.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.core import paths as P
from kaggle_utils.core.constants import EXCLUDED_SERIES, EXCLUDED_STUDIES, IGNORE_INDEX, LABEL_COLUMNS, SEVERITIES
from kaggle_utils.core.faults import FaultLog
from kaggle_utils.core.views import VIEW_OF_DESCRIPTION, view_named, view_of_description


class TableError(ValueError):
    """A table that is missing or does not match its schema."""


ID_COLUMNS = ("study_id", "series_id", "instance_number")
"""Columns of the competition's CSVs that hold integer ids: read as text and parsed row by row, so that one bad row
cannot turn a whole column into floats (and every folder name into "123.0")."""

NUMBER_COLUMNS = ("x", "y")
"""Columns of the competition's CSVs that hold coordinates."""

Origin = tuple[int | None, int | None]
"""(study, series) a CSV line names; None where the field is absent or not an id."""

_SHOWN_PROBLEMS = 10
"""Rows named in full in a warning about a file; the others are counted."""

_SAID: set[str] = set()


def _say_once(message: str, warn: bool = True) -> None:
    """A warning (or a printed line) about an input file, once per process: a run reads the same listing for its
    sagittal and its axial series, and the fault it finds there is one fault."""
    if message not in _SAID:
        _SAID.add(message)
        if warn:
            warnings.warn(message, stacklevel=3)
        else:
            print(message)


COLUMNS: dict[str, tuple[str, ...]] = {
    P.TRAIN_CSV: ("study_id",),
    P.TRAIN_SERIES_CSV: ("study_id", "series_id", "series_description"),
    P.TEST_SERIES_CSV: ("study_id", "series_id", "series_description"),
    P.TRAIN_COORDINATES_CSV: ("study_id", "series_id", "instance_number", "condition", "level", "x", "y"),
}
"""The columns the pipeline reads from each competition file: without one the whole file is unusable."""


def read_csv(paths: P.Paths, name: str, faults: FaultLog | None = None) -> pd.DataFrame:
    """A file of the competition folder (``read_checked_csv``); a missing one says where it was looked for, and one
    without the columns the pipeline reads (``COLUMNS``) says which it lacks."""
    path = paths.data_file(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {paths.data_dir} a folder in the competition layout?")
    table = read_checked_csv(path, faults)
    missing = [c for c in COLUMNS.get(name, ()) if c not in table]
    if missing:
        found = ", ".join(map(str, table.columns[:12]))
        raise TableError(f"{path} lacks the columns {', '.join(missing)} (its header: {found})")
    return table


def read_checked_csv(path: Path, faults: FaultLog | None = None) -> pd.DataFrame:
    """A competition CSV with its ids (``ID_COLUMNS``) as int64 and its coordinates (``NUMBER_COLUMNS``) as floats.

    A row that does not fit (a field count other than the header's, an id that is not a whole number, a coordinate
    that is not a number, an empty line) is left out, and one warning names each such row by file, line and study;
    each such row whose study can be read is kept in ``faults`` (if given) against that study.
    """
    ids = ID_COLUMNS
    header, rows, lines, problems, left_out = _csv_rows(path)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    buffer.seek(0)
    table = pd.read_csv(buffer, dtype={c: str for c in ids if c in header})
    table.index = lines
    keep = pd.Series(True, index=table.index)
    for column in (c for c in ids if c in table):
        text = table[column].fillna("").str.strip()
        whole = text.str.fullmatch(r"\d+(\.0*)?")  # as ``_whole`` reads one
        problems += [(line, f"{column} {value!r} is not an id") for line, value in text[~whole & keep].items()]
        keep &= whole
        table[column] = text.str.replace(r"\.0*$", "", regex=True).where(whole, "-1")
    for column in (c for c in NUMBER_COLUMNS if c in table):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & keep
        problems += [(line, f"{column} {table.at[line, column]!r} is not a number") for line in bad[bad].index]
        keep &= ~values.isna()
        table[column] = values
    if problems:
        origin = _row_origins(header, {**dict(zip(lines, rows, strict=True)), **left_out}, [p[0] for p in problems])
        _warn_rows(path, origin, problems)
        _keep_row_faults(faults, path, origin, problems)
    table = table[keep].astype({c: "int64" for c in ids if c in table})
    return table.reset_index(drop=True)


def _csv_rows(
    path: Path,
) -> tuple[list[str], list[list[str]], list[int], list[tuple[int, str]], dict[int, list[str]]]:
    """The header, the rows with as many fields as the header and their line numbers, why each other line is left
    out, and the fields of those lines."""
    try:
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig", errors="replace")))
        header = next(reader, None)
        if not header:
            raise TableError(f"{path}: the file is empty, it has no header line")
        rows, lines, problems, left_out = [], [], [], {}
        for fields in reader:
            blank = not any(f.strip() for f in fields)
            if not blank and len(fields) == len(header):
                rows.append(fields)
                lines.append(reader.line_num)
                continue
            left_out[reader.line_num] = fields
            why = "empty line" if blank else f"{len(fields)} fields where the header has {len(header)}"
            problems.append((reader.line_num, why))
    except csv.Error as error:
        raise TableError(f"{path}: not a readable CSV ({error})") from error
    return header, rows, lines, problems, left_out


def _row_origins(header: list[str], fields_of: dict[int, list[str]], lines: list[int]) -> dict[int, Origin]:
    """(study, series) that each of ``lines`` names in its fields (None where a field is absent or not an id), the
    lines with a wrong field count included: a row too short or too long still says whose it was."""
    columns = [header.index(c) if c in header else None for c in ("study_id", "series_id")]

    def named(fields: list[str]) -> Origin:
        return tuple(_whole(fields[k]) if k is not None and k < len(fields) else None for k in columns)

    return {line: named(fields_of[line]) for line in lines}


def _warn_rows(path: Path, origin: dict[int, Origin], problems: list[tuple[int, str]]) -> None:
    named = []
    for line, why in sorted(problems)[:_SHOWN_PROBLEMS]:
        study = origin.get(line, (None, None))[0]
        named.append(f"line {line}" + (f" (study {study})" if study is not None else "") + f": {why}")
    more = f"; and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
    _say_once(f"{path}: {len(problems)} rows left out: {'; '.join(named)}{more}")


def _keep_row_faults(
    faults: FaultLog | None, path: Path, origin: dict[int, Origin], problems: list[tuple[int, str]]
) -> None:
    """Each left-out row whose study can be read, kept in ``faults`` against its study (and series, where readable)."""
    for line, why in sorted(problems) if faults is not None else ():
        study, series = origin.get(line, (None, None))
        if study is not None:
            faults.keep(study, series, f"{path.name} line {line} not read: {why}")


def study_ids(paths: P.Paths, split: str) -> list[int]:
    """The studies a submission must cover: every study a split's series descriptions name, in any row whose first
    fields can be read (a row whose other fields cannot still names its study, which then gets its rows from the
    class priors), and for the test split those of ``sample_submission.csv`` where it exists (said when the
    descriptions do not list them)."""
    path = paths.data_file(series_csv(split))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {paths.data_dir} a folder in the competition layout?")
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig", errors="replace")))
    header = next(reader, [])
    if "study_id" not in header:
        raise TableError(f"{path}: no study_id column in its header {header}")
    k = header.index("study_id")
    listed = {_whole(fields[k]) for fields in reader if len(fields) > k} - {None}
    sample = paths.data_file(P.SAMPLE_SUBMISSION_CSV)
    if split == "test" and sample.exists():
        row_ids = pd.read_csv(sample, usecols=["row_id"], dtype=str)["row_id"].dropna()
        expected = {int(s) for s in row_ids.str.extract(r"^\s*(\d+)_", expand=False).dropna()}
        unlisted = sorted(expected - listed)
        if unlisted:
            warnings.warn(
                f"{sample.name} expects studies that {path.name} does not list (they get the class priors): "
                f"{unlisted[:_SHOWN_PROBLEMS]}",
                stacklevel=2,
            )
        listed |= expected
    return sorted(int(s) for s in listed)


def _whole(text: str) -> int | None:
    """An id written as a whole number ("123", " 123 ", "123.0"), else None."""
    match = re.fullmatch(r"\s*(\d+)(\.0*)?\s*", text)
    return int(match[1]) if match else None


def series_csv(split: str) -> str:
    """The series descriptions file of ``train`` or ``test``."""
    return P.TRAIN_SERIES_CSV if split == "train" else P.TEST_SERIES_CSV


def listed_series(paths: P.Paths, split: str, faults: FaultLog | None = None) -> pd.DataFrame:
    """Every series a split's descriptions list, with its view (``views.view_of_description``; descriptions matched
    leniently are said, unknown ones are named, left out and kept in ``faults``) and its description written as the
    view's."""
    table = read_csv(paths, series_csv(split), faults)
    table["view"] = table["series_description"].map(view_of_description)
    unknown = table[table["view"].isna()]
    if len(unknown):
        named = _named_series(unknown, with_description=True)
        _say_once(f"{series_csv(split)}: {len(unknown)} series of no known view are not read: {named}")
        _keep_faults(faults, unknown, "not read: {description!r} is no known view")
    table = table.dropna(subset=["view"])
    canonical = table["view"].map(lambda name: view_named(name).description)
    lenient = table[table["series_description"] != canonical]
    if len(lenient):
        named = _named_series(lenient, with_description=True)
        _say_once(f"{series_csv(split)}: {len(lenient)} series descriptions read as their view's: {named}", warn=False)
    return table.assign(series_description=canonical)


def _named_series(table: pd.DataFrame, with_description: bool = False) -> str:
    rows = table.head(_SHOWN_PROBLEMS).itertuples()
    named = [
        f"study {r.study_id} series {r.series_id}" + (f" {r.series_description!r}" if with_description else "")
        for r in rows
    ]
    return ", ".join(named) + (f" and {len(table) - _SHOWN_PROBLEMS} more" if len(table) > _SHOWN_PROBLEMS else "")


def _keep_faults(faults: FaultLog | None, series: pd.DataFrame, message: str) -> None:
    """Each listed series of ``series`` kept in ``faults`` (if given) with ``message`` (``{description}`` filled)."""
    for row in series.itertuples() if faults is not None else ():
        faults.keep(row.study_id, row.series_id, message.format(description=row.series_description))


def series_table(paths: P.Paths, split: str, faults: FaultLog | None = None) -> pd.DataFrame:
    """Sagittal series of a split (``train`` or ``test``); training drops the known bad ids, saying why. A listed
    series of no known view or without an image folder is named and left out, and kept in ``faults`` (a run's log,
    whose summary then says what its study lost)."""
    table = listed_series(paths, split, faults)
    table = table[table["view"].isin(VIEW_OF_DESCRIPTION.values())].copy()
    if split == "train":
        table = drop_excluded(table)
    table["split"] = split
    table["fold"] = -1
    if len(table) and not paths.images_dir(split).is_dir():
        warnings.warn(
            f"{paths.images_dir(split)} does not exist, so no {split} series can be read: is {paths.data_dir} the "
            "competition's folder?",
            stacklevel=2,
        )
    present = [
        paths.series_dir(split, s, r).is_dir() for s, r in zip(table["study_id"], table["series_id"], strict=True)
    ]
    if not all(present):
        absent = table[~np.array(present)]
        warnings.warn(
            f"{len(absent)} {split} series have no image folder and are skipped: {_named_series(absent)}",
            stacklevel=2,
        )
        _keep_faults(faults, absent, "not read: listed, but it has no image folder")
        table = table[np.array(present)]
    return table[["study_id", "series_id", "series_description", "view", "split", "fold"]].reset_index(drop=True)


def drop_excluded(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of excluded studies and series removed (``constants.EXCLUDED_*`` hold the reasons)."""
    bad = table["study_id"].isin(EXCLUDED_STUDIES) | (
        table["series_id"].isin(EXCLUDED_SERIES) if "series_id" in table else False
    )
    if bad.any():
        print(f"excluded {int(bad.sum())} rows of known bad studies/series (reasons in constants.EXCLUDED_*)")
    return table[~bad]


# --- labels ----------------------------------------------------------------------------------------
def targets_table(labels: pd.DataFrame) -> pd.DataFrame:
    """``study_id`` + the 25 label columns as class indices (``IGNORE_INDEX`` where missing). Labels are matched
    ignoring case, spacing and punctuation ("normal / mild"); a label that names no severity is ignored, and one
    warning counts them with examples."""
    codes = {_label_key(name): k for k, name in enumerate(SEVERITIES)}
    out = pd.DataFrame({"study_id": labels["study_id"].astype(np.int64)})
    unknown: list[str] = []
    for column in LABEL_COLUMNS:
        if column not in labels:
            out[column] = IGNORE_INDEX
            continue
        cells = labels[column]
        classes = cells.map(lambda v: codes.get(_label_key(v)) if isinstance(v, str) else None)
        odd = cells.notna() & classes.isna()
        unknown += [f"study {s} {column} {v!r}" for s, v in zip(labels.loc[odd, "study_id"], cells[odd], strict=True)]
        out[column] = classes.fillna(IGNORE_INDEX).astype(int)
    if unknown:
        warnings.warn(
            f"{len(unknown)} labels name no severity ({', '.join(SEVERITIES)}) and are ignored: "
            f"{', '.join(unknown[:_SHOWN_PROBLEMS])}",
            stacklevel=2,
        )
    return out


def _label_key(label: str) -> str:
    return re.sub(r"[^a-z]", "", label.lower())
