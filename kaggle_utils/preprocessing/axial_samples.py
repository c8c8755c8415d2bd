"""The axial branch's training samples: each assigned (series, level) slice with its left and right subarticular
points, wherever in the study they were clicked.

In the competition's data a level's two points are often on two series (two full axial passes, the left points
labelled on one and the right on the other), and a point's slice need not be the slice the sagittal keypoints
assign. So a point is carried through patient coordinates: its pixel on the instance it was clicked on -> world
mm (that slice's own geometry, the stored image's pixel turned as the image is on reading) -> the assigned slice's
pixel. A point clicked more than ``MAX_SLICE_OFFSET`` slices
from the assigned slice (or in another block of the same series; on another series: its nearest slice plane more
than that many slice spacings away) images another part of the disc, or shows that the level assignment is wrong:
it is left out and counted.

A level with one known point is still a sample: the unknown side is placed by mirroring the known point through
the level's projected Sagittal T2 canal point (``point_x`` of the level table), marked ``labelled = False``, and
masked in the localiser's loss and, with its label, in the classifier's. A level with no point left is no sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kaggle_utils.core import paths as P
from kaggle_utils.core.constants import CONDITION_TITLES, SUBARTICULAR_CONDITIONS
from kaggle_utils.io.competition import read_csv
from kaggle_utils.io.dicom import SeriesError, pixel_to_world
from kaggle_utils.io.tables import SCHEMAS
from kaggle_utils.preprocessing.axial_levels import AxialSeries, read_axial_series

SIDES = dict(zip(("L", "R"), (CONDITION_TITLES[c] for c in SUBARTICULAR_CONDITIONS), strict=True))
"""The axial localiser's two points in output order, each with the condition naming it in the coordinates file."""

MAX_SLICE_OFFSET = 2
"""A labelled point more slices than this from the assigned slice is not that slice's point."""

_SHOWN = 10
"""Absent points named in full in the checks' summary; the others are counted."""

CHECK_COLUMNS = SCHEMAS["axial_checks"]
"""Per study: samples kept, of them with one side estimated, points left out by the slice check, samples dropped."""


@dataclass
class SampleChecks:
    """What the sample table kept and left out, per study (``table``) and in all (``totals``)."""

    rows: list[dict] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # labelled points whose instance their series does not have

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(CHECK_COLUMNS))

    def totals(self) -> dict[str, int]:
        return {c: int(self.table[c].sum()) for c in CHECK_COLUMNS[1:]}

    def __str__(self) -> str:
        t, table = self.totals(), self.table
        far = table[table["far_points"] > 0]
        per_study = "".join(
            f"\n  study {r.study_id}: {r.far_points} points, {r.dropped} samples" for r in far.itertuples()
        )
        absent = ""
        if self.absent:
            more = f" and {len(self.absent) - _SHOWN} more" if len(self.absent) > _SHOWN else ""
            absent = (
                f"\n{len(self.absent)} labelled points left out because their series (unreadable) or instance "
                f"(no such file) is not there: {', '.join(self.absent[:_SHOWN])}{more}"
            )
        return (
            f"axial samples: {t['samples']} kept, {t['one_sided']} of them with one side estimated (its loss masked), "
            f"{t['far_points']} labelled points more than {MAX_SLICE_OFFSET} slices from the assigned one left "
            f"out, {t['dropped']} samples dropped for it or for absent points{per_study}{absent}"
        )


def block_spacing(series: AxialSeries, k: int) -> float:
    """Median distance (mm) between neighbouring slices of slice k's block (the series' when the block has one)."""
    heights = series.geometry.positions @ series.normals[k]
    same = series.block == series.block[k]
    gaps = np.abs(np.diff(heights[same][np.argsort(series.index[same])]))
    if not len(gaps):
        gaps = np.concatenate(
            [np.abs(np.diff(heights[series.block == b])) for b in np.unique(series.block)] + [np.zeros(0)]
        )
    return float(np.median(gaps)) if len(gaps) else float("inf")


def carry_point(
    source: AxialSeries, instance: int, xy: tuple[float, float], target: AxialSeries, k: int
) -> np.ndarray | None:
    """(2,) pixel x, y on ``target``'s slice k of the point clicked at ``xy`` on ``source``'s ``instance``, through
    patient coordinates; None when that instance is not in ``source`` or lies more than ``MAX_SLICE_OFFSET`` slices
    from slice k (in another block of the same series; another series': nearer another slice of k's spacing)."""
    found = np.flatnonzero(source.instance_numbers == instance)
    if not len(found):
        return None
    j = int(found[0])
    g = source.geometry
    x, y = g.stored_point(j, *xy)  # clicked on the stored image; the geometry is of the turned one
    world = pixel_to_world(g.positions[j], g.orientations[j], g.pixel_spacing[j], x, y)
    if source is target:
        if source.block[j] != source.block[k] or abs(int(source.index[j]) - int(source.index[k])) > MAX_SLICE_OFFSET:
            return None
    elif abs(float(target.signed_distances(world)[k])) > (MAX_SLICE_OFFSET + 0.5) * block_spacing(target, k):
        return None
    return target.pixel(k, world)


def _subarticular_points(coords: pd.DataFrame) -> pd.DataFrame:
    side_of = {condition: side for side, condition in SIDES.items()}
    coords = coords[coords["condition"].isin(side_of)]
    return coords.assign(side=coords["condition"].map(side_of))


class _SeriesCache:
    """Axial series of the training split read from their headers once each (None: unreadable or not axial)."""

    def __init__(self, paths: P.Paths) -> None:
        self.paths, self.read = paths, {}

    def get(self, study_id: int, series_id: int) -> AxialSeries | None:
        if series_id not in self.read:
            try:
                folder = self.paths.series_dir("train", study_id, series_id)
                self.read[series_id] = read_axial_series(folder, series_id)
            except SeriesError:
                self.read[series_id] = None
        return self.read[series_id]


def _sample_rows(
    row: pd.Series, target: AxialSeries, k: int, clicked: pd.DataFrame, cache: _SeriesCache
) -> tuple[list[tuple], int, list[str]]:
    """The rows of one assigned slice (none when no point is known), how many of its points were too far, and the
    points whose series cannot be read or lacks their instance, named."""
    rows_px, cols_px = target.geometry.shapes[k]
    known, far, absent = {}, 0, []
    for side in SIDES:
        for click in clicked[clicked["side"] == side].itertuples():
            source = cache.get(int(click.study_id), int(click.series_id))
            instance = int(click.instance_number)
            if source is None or instance not in source.instance_numbers:
                absent.append(f"study {click.study_id} series {click.series_id} instance {instance} ({side})")
                continue
            xy = carry_point(source, instance, (click.x, click.y), target, k)
            if xy is None:
                far += 1
            else:
                known[side] = xy
    if not known:
        return [], far, absent
    carried = set(known)
    if len(known) == 1:  # the other side mirrored through the sagittal canal point, left to right only
        ((side, xy),) = known.items()
        other = next(s for s in SIDES if s != side)
        known[other] = np.array([2 * float(row["point_x"]) - xy[0], xy[1]])
    keys = (row["study_id"], row["series_id"], row["level"], row["instance_number"])
    relative = {side: (float(known[side][0]) / cols_px, float(known[side][1]) / rows_px) for side in SIDES}
    return [(*keys, side, *relative[side], side in carried) for side in SIDES], far, absent


def keypoints_table(
    paths: P.Paths, levels: pd.DataFrame, clicks: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, SampleChecks]:
    """The axial localiser's and classifier's training samples: each assigned (series, level) slice of ``levels``
    with its left and right points relative to that slice's image (``labelled`` False: the side estimated, see the
    module doc), and the per-study counts of what was kept and left out. ``clicks``: the rows of
    ``train_label_coordinates.csv`` to use (default: all of it)."""
    clicks = _subarticular_points(read_csv(paths, P.TRAIN_COORDINATES_CSV) if clicks is None else clicks)
    by_level = dict(tuple(clicks.groupby(["study_id", "level"])))
    cache, checks, rows = _SeriesCache(paths), SampleChecks(), []
    for study_id, study_levels in levels[levels["assigned"]].groupby("study_id", sort=True):
        counts = dict.fromkeys(CHECK_COLUMNS[1:], 0)
        for _, row in study_levels.iterrows():
            clicked = by_level.get((study_id, row["level"]))
            target = cache.get(int(study_id), int(row["series_id"]))
            if clicked is None or target is None:
                continue
            k = int(np.flatnonzero(target.instance_numbers == row["instance_number"])[0])
            sample, far, absent = _sample_rows(row, target, k, clicked, cache)
            checks.absent += absent
            counts["far_points"] += far
            counts["dropped"] += int(not sample and (far > 0 or bool(absent)))
            counts["samples"] += int(bool(sample))
            counts["one_sided"] += int(bool(sample) and not all(r[-1] for r in sample))
            rows += sample
        checks.rows.append({"study_id": int(study_id), **counts})
    columns = list(SCHEMAS["axial_keypoints"])
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({"study_id": np.int64, "series_id": np.int64, "instance_number": np.int64, "labelled": bool})
    return table.sort_values(["study_id", "series_id", "level", "side"]).reset_index(drop=True), checks


def points_by_level(keypoints: pd.DataFrame, labelled_only: bool = False) -> dict[tuple[int, str], np.ndarray]:
    """(series id, level) -> (2, 2) relative (x, y) of the sample's left and right points, for a whole table; with
    ``labelled_only`` an estimated side is NaN (the localiser's loss leaves it out)."""
    out = {}
    for (series_id, level), rows in keypoints.groupby(["series_id", "level"]):
        by_side = rows.set_index("side").loc[list(SIDES)]
        points = by_side[["relative_x", "relative_y"]].to_numpy(np.float64, copy=True)
        if labelled_only and "labelled" in by_side:
            points[~by_side["labelled"].to_numpy(bool)] = np.nan
        out[int(series_id), str(level)] = points
    return out
