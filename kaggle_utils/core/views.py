"""Series views: each kind of series the pipeline reads, declared once.

A view says what the rest of the package asks of a series type: the ``series_description`` that selects it, its
short name (a config's ``plane``, file names), how its stage-1 keypoints are laid out and where the competition's
coordinates put them, which crop geometry its levels get, whether reversing its slices mirrors the patient (so a
sequence flip swaps left and right labels), and which condition rows its stage-2 models can predict. Tables,
preprocessing, the datasets, inference and the pictures ask the view instead of branching on a plane's name;
adding a view is one entry here plus its geometry and its tests.

The sagittal views are localised and classified per series (all five levels at once); the axial view per level: its
samples are the assigned slices of each level (``preprocessing.axial_levels``), its two points the left and right
subarticular points, and its classifiers see the level's three crops (canal, left and right recess).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kaggle_utils.core.constants import AXIAL_T2, LEVEL_SLUGS, SAGITTAL_T1, SAGITTAL_T2


@dataclass(frozen=True)
class KeypointLayout:
    """The stage-1 keypoints of a view: ``per_level`` relative (x, y) points at each disc level."""

    levels: int = len(LEVEL_SLUGS)
    per_level: int = 2

    @property
    def count(self) -> int:
        """The localiser's outputs: points per series."""
        return self.levels * self.per_level

    @property
    def shape(self) -> tuple[int, int, int]:
        """(levels, points per level, 2): how a series' keypoints are held."""
        return self.levels, self.per_level, 2


@dataclass(frozen=True)
class View:
    """One series type (see the module docstring)."""

    name: str  # a config's ``plane``: "t1", "t2"
    description: str  # its ``series_description`` in the competition's CSVs
    keypoints: KeypointLayout
    # Where the competition's coordinates give the view's keypoints: "foramina" (the left and right foraminal
    # points of a level) or "canal" (the spinal canal point, the front of the disc placed in front of it).
    keypoints_from: str
    family: str  # the condition family whose points this view's series carry in a per-condition keypoint file
    # Crop geometry (``sagittal.level_boxes``): "along_disc" (rotated so the disc's front-back line is
    # horizontal, around the back point) or "upright" (not rotated, around the midpoint of the level's points).
    crop: str
    flip_swaps_sides: bool  # reversing the slices mirrors the patient (sagittal slices run from left to right)
    conditions: str  # the condition rows its stage-2 models predict (``labels.CONDITION_ROWS``)
    localised_per: str = "series"  # "series" (sagittal: one stage-1 sample per series) or "level" (axial)
    # Its keypoints place the disc levels on the slices of the view localised per level (the level's point behind the
    # disc, in patient coordinates): the Sagittal T2's canal points
    places_levels: bool = False
    # Fewer usable slices and a series of this view is not read: a sagittal series needs the middle and both sides
    # (the solution's series have 15 or more; 1 or 2 slices cannot show both foramina)
    min_slices: int = 3
    plane: str = "sagittal"  # the plane its slices lie in (``dicom.PLANE_NAMES``): a series in another is not read
    weighting: str = "t2"  # the contrast its series are acquired with ("t1", "t2": STIR counts as T2)


VIEWS: dict[str, View] = {
    "t1": View(
        name="t1",
        description=SAGITTAL_T1,
        keypoints=KeypointLayout(),
        keypoints_from="foramina",
        family="foraminal",
        crop="upright",
        flip_swaps_sides=True,
        conditions="foraminal",
        weighting="t1",
    ),
    "t2": View(
        name="t2",
        description=SAGITTAL_T2,
        keypoints=KeypointLayout(),
        keypoints_from="canal",
        family="spinal",
        crop="along_disc",
        flip_swaps_sides=True,
        conditions="all",
        places_levels=True,
    ),
    "axial": View(
        name="axial",
        description=AXIAL_T2,
        keypoints=KeypointLayout(levels=1, per_level=2),  # left, then right subarticular point
        keypoints_from="subarticular",
        family="subarticular",
        crop="axial",
        flip_swaps_sides=False,  # reversing axial slices runs them upwards: left stays left
        conditions="axial",
        localised_per="level",
        plane="axial",
    ),
}
"""The views read, by name; their order is the order of the pictures."""

LEVEL_VIEW = next(name for name, v in VIEWS.items() if v.localised_per == "level")
"""The view localised and classified per level (Axial T2), whose levels the ``places_levels`` view places."""

PLACING_VIEW = next(name for name, v in VIEWS.items() if v.places_levels)
"""The view whose keypoints place the levels of ``LEVEL_VIEW`` (Sagittal T2/STIR)."""

VIEW_OF_DESCRIPTION: dict[str, str] = {v.description: name for name, v in VIEWS.items() if v.localised_per == "series"}
"""A sagittal series description -> the name of the view that reads it: the series of the series table (the axial
series have their own, ``axial_levels.axial_series_table``); descriptions not here are not read as sagittal."""

_PLANE_WORDS = {"sagittal": "sagittal", "sag": "sagittal", "axial": "axial", "ax": "axial", "tra": "axial"}
_WEIGHTING_WORDS = {"t1": "t1", "t2": "t2", "stir": "t2"}
"""Words of a series description that name its plane and its weighting (``view_of_description``): STIR is the
fat-suppressed T2 that the competition files under "Sagittal T2/STIR"."""


def _description_key(description: object) -> tuple[str, str] | None:
    """(plane, weighting) a description names, ignoring case, spacing and punctuation; None unless it names
    exactly one of each."""
    if not isinstance(description, str):
        return None
    words = re.findall(r"[a-z0-9]+", description.lower())
    planes = {_PLANE_WORDS[w] for w in words if w in _PLANE_WORDS}
    weightings = {_WEIGHTING_WORDS[w] for w in words if w in _WEIGHTING_WORDS}
    return (planes.pop(), weightings.pop()) if len(planes) == len(weightings) == 1 else None


_VIEW_OF_KEY = {_description_key(v.description): name for name, v in VIEWS.items()}


def view_of_description(description: object) -> str | None:
    """The name of the view a ``series_description`` names, matched leniently where it is unambiguous: case,
    spacing and punctuation are ignored, so "sagittal t2 stir", "Sagittal_T2-STIR", "Sagittal T2" and "Sag STIR"
    are all Sagittal T2/STIR; None when it names no view, or a plane or weighting twice over ("Sagittal T1/T2")."""
    key = _description_key(description)
    return None if key is None else _VIEW_OF_KEY.get(key)


def view_named(name: str) -> View:
    """The view of a config's ``plane``; an unknown name is named with the known ones."""
    if name not in VIEWS:
        raise ValueError(f"unknown view (plane) {name!r}; known: {', '.join(VIEWS)}")
    return VIEWS[name]
