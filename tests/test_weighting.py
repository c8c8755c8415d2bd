"""The weighting a header states: clear T1 and T2 (STIR included) timings answer, anything else does not; a series
listed under the other weighting's view is read as the view its header states."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kaggle_utils.io.dicom import Series
from kaggle_utils.io.weighting import timings, weighting_of
from kaggle_utils.preprocessing.sagittal import header_view


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (dict(RepetitionTime=600, EchoTime=12), "t1"),  # T1 fast spin echo
        (dict(RepetitionTime="3500", EchoTime="100"), "t2"),  # T2 fast spin echo, as decimal strings
        (dict(RepetitionTime=4000, EchoTime=40, InversionTime=150), "t2"),  # STIR
        (dict(RepetitionTime=2000, EchoTime=12, InversionTime=800), None),  # T1 FLAIR: not judged
        (dict(RepetitionTime=2000, EchoTime=20), None),  # proton density
        (dict(RepetitionTime=600), None),  # no echo time
        (dict(RepetitionTime="", EchoTime="x"), None),  # unreadable values
        ({}, None),  # an anonymiser removed them
    ],
)
def test_only_clear_timings_state_a_weighting(tags: dict, expected: str | None) -> None:
    assert weighting_of(SimpleNamespace(**tags)) == expected


def test_timings_are_quoted_as_a_reader_would() -> None:
    assert timings(SimpleNamespace(RepetitionTime=600.0, EchoTime=12)) == "TR 600 ms, TE 12 ms"
    assert timings(SimpleNamespace()) == ""


def _series(weighting: str | None) -> Series:
    n = 3
    return Series(
        slices=[np.zeros((4, 4), np.float32)] * n,
        positions=np.array([[float(x), 0.0, 0.0] for x in range(n)]),
        orientation=np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]),
        pixel_spacing=np.ones((n, 2)),
        instance_numbers=np.arange(1, n + 1),
        description="",
        folder=Path("s"),
        weighting=weighting,
        timings="TR 600 ms, TE 12 ms" if weighting == "t1" else "TR 3500 ms, TE 100 ms",
    )


def test_a_series_is_read_as_the_view_its_header_states() -> None:
    assert header_view(_series("t2"), "t2") == ("t2", None)
    assert header_view(_series(None), "t2") == ("t2", None)  # no clear timings: the listing stands
    view, why = header_view(_series("t1"), "t2")
    assert view == "t1" and why == (
        "listed as Sagittal T2/STIR, but its header's timings (TR 600 ms, TE 12 ms) are T1-weighted: read as "
        "Sagittal T1"
    )
    assert header_view(_series("t2"), "t1")[0] == "t2"
