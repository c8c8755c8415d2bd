"""The series views: each declared once, consistent with the label vocabulary, and asked instead of plane names."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.constants import CONDITION_FAMILIES, SERIES_DESCRIPTIONS
from kaggle_utils.core.labels import CONDITION_ROWS
from kaggle_utils.core.views import (
    LEVEL_VIEW,
    PLACING_VIEW,
    VIEW_OF_DESCRIPTION,
    VIEWS,
    view_named,
    view_of_description,
)
from kaggle_utils.preprocessing.sagittal import level_boxes


def test_every_view_names_what_the_package_asks_of_it():
    for name, v in VIEWS.items():
        assert v.name == name and v.description in SERIES_DESCRIPTIONS and v.family in CONDITION_FAMILIES
        assert v.conditions in CONDITION_ROWS and v.localised_per in ("series", "level")
        if v.localised_per == "series":  # the sagittal views: the series table's, all five levels at once
            assert VIEW_OF_DESCRIPTION[v.description] == name and v.crop in ("along_disc", "upright")
            assert v.keypoints_from in ("foramina", "canal") and v.flip_swaps_sides
            assert v.keypoints.shape == (5, 2, 2) and v.keypoints.count == 10
        else:  # the axial view: a level at a time, its left and right subarticular points
            assert v.description not in VIEW_OF_DESCRIPTION and v.keypoints_from == "subarticular"
            assert v.keypoints.shape == (1, 2, 2) and v.keypoints.count == 2 and not v.flip_swaps_sides
    assert [n for n, v in VIEWS.items() if v.localised_per == "level"] == ["axial"]


def test_an_unknown_view_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown view \\(plane\\) 'ax'; known: t1, t2, axial"):
        view_named("ax")


def test_the_crop_geometry_follows_the_view():
    """T2 boxes turn with the disc's front-back line; T1 boxes stay upright whatever the points."""
    y = np.linspace(0.3, 0.7, 5)
    points = np.stack([np.c_[np.full(5, 0.40), y + 0.03], np.c_[np.full(5, 0.55), y - 0.03]], axis=1)
    t2 = level_boxes(points, "t2", 256, 256, PreprocessConfig())
    t1 = level_boxes(points, "t1", 256, 256, PreprocessConfig())
    assert all(abs(b.angle) > 1 for b in t2) and all(b.angle == 0 for b in t1)


@pytest.mark.parametrize(
    ("description", "name"),
    [
        ("Sagittal T1", "t1"),
        ("Sagittal T2/STIR", "t2"),
        ("Axial T2", "axial"),
        ("sagittal t2 stir", "t2"),
        ("Sagittal_T2-STIR", "t2"),
        ("Sagittal T2", "t2"),
        ("SAG STIR", "t2"),
        (" Axial  T2 ", "axial"),
        ("Sagittal T1/T2", None),  # two weightings: ambiguous
        ("Coronal T2", None),
        ("Axial T1", None),
        ("", None),
        (float("nan"), None),
    ],
)
def test_a_description_names_its_view_leniently_where_unambiguous(description, name):
    assert view_of_description(description) == name


def test_one_view_is_localised_per_level_and_one_places_its_levels():
    assert [n for n, v in VIEWS.items() if v.localised_per == "level"] == [LEVEL_VIEW] == ["axial"]
    assert [n for n, v in VIEWS.items() if v.places_levels] == [PLACING_VIEW] == ["t2"]
