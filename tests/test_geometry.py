"""Turning a stored image to its plane's usual orientation: the pixels, the geometry and a labelled point agree."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kaggle_utils.io.geometry import Geometry, Turn, pixel_to_world, turn_of, world_to_pixel

USUAL = {  # rows run along, columns run along (module doc of ``geometry``)
    "sagittal": ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),
    "coronal": ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
    "axial": ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
}


def _stored_ways(plane: str) -> list[np.ndarray]:
    """The eight ways of storing an image of ``plane``: either direction reversed, rows and columns swapped."""
    row, col = (np.array(v) for v in USUAL[plane])
    ways = []
    for swap, row_sign, col_sign in itertools.product((False, True), (1.0, -1.0), (1.0, -1.0)):
        r, c = row_sign * row, col_sign * col
        ways.append(np.concatenate([c, r] if swap else [r, c]))
    return ways


@pytest.mark.parametrize("plane", sorted(USUAL))
def test_an_image_stored_the_usual_way_is_not_turned(plane: str) -> None:
    orientation = np.concatenate(USUAL[plane])
    assert turn_of(orientation, 5, 7).none
    tilted = orientation + 0.05 * np.array([1.0, -1.0, 1.0, 1.0, 1.0, -1.0])  # an oblique slice
    assert turn_of(tilted, 5, 7).none


@pytest.mark.parametrize(("plane", "way"), [(p, w) for p in sorted(USUAL) for w in range(8)])
def test_a_turned_image_keeps_every_pixel_where_it_lies(plane: str, way: int) -> None:
    """Whichever way an image is stored, turned it shows its plane the usual way, and each pixel (and a labelled
    point) stays at its place in the patient."""
    orientation = _stored_ways(plane)[way]
    position, spacing = np.array([10.0, -20.0, 30.0]), np.array([0.7, 0.9])
    stored = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    turn = turn_of(orientation, *stored.shape)
    assert turn.none == (way == 0)
    image = turn.image(stored)
    position2, orientation2, spacing2 = turn.geometry(position, orientation, spacing)
    np.testing.assert_allclose(orientation2, np.concatenate(USUAL[plane]), atol=1e-12)
    assert image.shape == turn.shape and turn_of(orientation2, *image.shape).none
    for y2, x2 in itertools.product(range(image.shape[0]), range(image.shape[1])):
        world = pixel_to_world(position2, orientation2, spacing2, x2, y2)
        x, y = np.rint(world_to_pixel(position, orientation, spacing, world)).astype(int)
        assert stored[y, x] == image[y2, x2]
        np.testing.assert_allclose(turn.point(x, y), (x2, y2))


def test_a_geometry_maps_a_point_clicked_on_the_stored_image() -> None:
    turns = (Turn(5, 7), Turn(5, 7, flip_x=True), Turn(5, 7, transpose=True, flip_y=True))
    geometry = Geometry(*(np.zeros((3, n)) for n in (3, 6, 2, 2)), np.arange(3), turns=turns)
    assert geometry.stored_point(0, 2.0, 1.0) == (2.0, 1.0)
    assert geometry.stored_point(1, 2.0, 1.0) == (4.0, 1.0)
    assert geometry.stored_point(2, 2.0, 1.0) == (1.0, 4.0)  # transposed to 5 wide and 7 high, then rows reversed
    assert geometry.take(np.array([2])).turns == turns[2:]
