"""Where a slice lies: its normal and plane, the order of a series' slices, pixel <-> world, the geometry of a
series read from its headers, and the turn that brings a stored image to its plane's usual orientation.

Pixel <-> world: pixel (x = column, y = row) of a slice with ImagePositionPatient ``ipp``,
ImageOrientationPatient ``(row_cos, col_cos)`` and PixelSpacing ``(row spacing, column spacing)``
lies at ``ipp + x * col_spacing * row_cos + y * row_spacing * col_cos`` (mm).

A scanner may store an image turned: a sagittal slice facing the other way, upside down, or with rows and columns
swapped; its header's geometry is then true of the stored pixels, but a model trained on images seen as radiologists
see them would read it wrong. Every image is therefore turned on reading (``Turn``) to its plane's usual orientation,
its rows running along the first axis below and its columns along the second, and its geometry with it, so that
pixel <-> world stays true:

| plane    | rows run towards    | columns run towards |
|----------|---------------------|---------------------|
| sagittal | posterior (+y)      | inferior (-z)       |
| coronal  | patient left (+x)   | inferior (-z)       |
| axial    | patient left (+x)   | posterior (+y)      |

An image stored so already is not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Ties in the projection closer than this (mm) count as equal and fall back to InstanceNumber, so
# that float noise in the headers cannot shuffle slices that share a position.
TIE_TOLERANCE_MM = 1e-3

PLANE_NAMES = ("sagittal", "coronal", "axial")
"""The plane of a slice by the largest component of its normal (patient x, y, z)."""


_UNIT_TOLERANCE = 1e-3
"""An orientation direction whose length is further than this from 1 is scaled to unit length; closer, it is kept
as written (the 6 decimals of a real header), so that ordinary files read bit for bit as written."""


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal ``row_cos x col_cos``, flipped so that its largest-magnitude component is positive.

    The fixed sign makes the order independent of how the scanner chose its row and column
    directions: sagittal normals point to patient left (+x), axial ones to superior (+z).
    """
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    normal = np.cross(iop[:3], iop[3:])
    length = np.linalg.norm(normal)
    if length < 1e-6:
        raise ValueError(f"degenerate ImageOrientationPatient {iop.tolist()}: row and column directions are parallel")
    normal /= length
    if normal[np.argmax(np.abs(normal))] < 0:
        normal = -normal
    return normal


def plane_of(orientation: Sequence[float] | np.ndarray) -> str:
    """``PLANE_NAMES`` entry of a slice: the patient axis its normal mostly follows."""
    return PLANE_NAMES[int(np.argmax(np.abs(slice_normal(orientation))))]


def order_slices(
    positions: np.ndarray, orientation: Sequence[float] | np.ndarray, instance_numbers: np.ndarray | None = None
) -> np.ndarray:
    """Indices that sort slices by descending projection on :func:`slice_normal`, ties by instance number."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    projection = np.round(positions @ slice_normal(orientation) / TIE_TOLERANCE_MM)
    tie_break = np.arange(len(positions)) if instance_numbers is None else np.asarray(instance_numbers)
    return np.lexsort((tie_break, -projection))  # last key is the primary one


def pixel_to_world(
    position: np.ndarray,
    orientation: Sequence[float] | np.ndarray,
    pixel_spacing: Sequence[float] | np.ndarray,
    x: np.ndarray | float,
    y: np.ndarray | float,
) -> np.ndarray:
    """World mm (..., 3) of pixel (x = column, y = row) on the slice at ``position``."""
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    row_spacing, col_spacing = np.asarray(pixel_spacing, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)[..., None]
    y = np.asarray(y, dtype=np.float64)[..., None]
    return np.asarray(position, dtype=np.float64) + x * col_spacing * iop[:3] + y * row_spacing * iop[3:]


def world_to_pixel(
    position: np.ndarray,
    orientation: Sequence[float] | np.ndarray,
    pixel_spacing: Sequence[float] | np.ndarray,
    world: np.ndarray,
) -> np.ndarray:
    """Pixel x (column), y (row) as (..., 2) of world point(s) projected onto the slice at ``position``."""
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    row_spacing, col_spacing = np.asarray(pixel_spacing, dtype=np.float64)
    offset = np.asarray(world, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    return np.stack([offset @ iop[:3] / col_spacing, offset @ iop[3:] / row_spacing], axis=-1)


def unit_directions(orientation: np.ndarray) -> np.ndarray:
    """ImageOrientationPatient with its row and column directions of unit length (see ``_UNIT_TOLERANCE``)."""
    directions = orientation.reshape(2, 3)
    lengths = np.linalg.norm(directions, axis=1, keepdims=True)
    if np.all(np.abs(lengths - 1.0) <= _UNIT_TOLERANCE):
        return orientation
    return (directions / lengths).reshape(6)


@dataclass
class Geometry:
    """Where every slice of a series lies, from its headers alone, in file order (``order_slices`` sorts it)."""

    positions: np.ndarray  # (N, 3) ImagePositionPatient, mm
    orientations: np.ndarray  # (N, 6) ImageOrientationPatient of each slice (blocks of an axial series differ)
    pixel_spacing: np.ndarray  # (N, 2) row spacing, column spacing, mm
    shapes: np.ndarray  # (N, 2) rows, columns of each image as read (turned: ``turns``)
    instance_numbers: np.ndarray  # (N,)
    files: tuple[Path, ...] = ()  # empty for the geometry of a series read in full (``Series.geometry``)
    dropped: tuple[str, ...] = ()  # "file: why" of each file whose header could not be used (``read_geometry``)
    turns: tuple[Turn, ...] = ()  # how each stored image was turned (``read_geometry``; empty: none was)

    def stored_point(self, index: int, x: float, y: float) -> tuple[float, float]:
        """Pixel x, y given on the stored image of the slice at ``index`` (a label) -> on the turned one."""
        if not self.turns:
            return x, y
        turned = self.turns[index].point(x, y)
        return float(turned[0]), float(turned[1])

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, index: np.ndarray) -> Geometry:
        """The slices at ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Geometry(
            self.positions[index],
            self.orientations[index],
            self.pixel_spacing[index],
            self.shapes[index],
            self.instance_numbers[index],
            tuple(self.files[i] for i in index) if self.files else (),
            self.dropped,
            tuple(self.turns[i] for i in index) if self.turns else (),
        )


_USUAL_AXES = {"sagittal": ((1, 1.0), (2, -1.0)), "coronal": ((0, 1.0), (2, -1.0)), "axial": ((0, 1.0), (1, 1.0))}
"""Plane -> the patient axis (x, y, z) and sign that its images' rows, then columns, run along (module doc)."""


@dataclass(frozen=True)
class Turn:
    """How a stored image of ``rows`` x ``cols`` pixels is turned to its plane's usual orientation: transposed
    first, then its columns reversed (``flip_x``), then its rows (``flip_y``)."""

    rows: int
    cols: int
    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @property
    def none(self) -> bool:
        return not (self.transpose or self.flip_x or self.flip_y)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the turned image."""
        return (self.cols, self.rows) if self.transpose else (self.rows, self.cols)

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """The stored pixels turned (the same array when there is nothing to turn)."""
        if self.none:
            return pixels
        turned = pixels.T if self.transpose else pixels
        return np.ascontiguousarray(turned[:: -1 if self.flip_y else 1, :: -1 if self.flip_x else 1])

    def point(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Pixel x (column), y (row) of the stored image -> the same point's on the turned one."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.transpose:
            x, y = y, x
        rows, cols = self.shape
        return (cols - 1 - x if self.flip_x else x), (rows - 1 - y if self.flip_y else y)

    def geometry(
        self, position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ImagePositionPatient, ImageOrientationPatient and PixelSpacing of the turned image."""
        if self.none:
            return position, orientation, spacing
        row_dir, col_dir = (orientation[3:], orientation[:3]) if self.transpose else (orientation[:3], orientation[3:])
        spacing = spacing[::-1] if self.transpose else spacing
        rows, cols = self.shape
        if self.flip_x:  # the first pixel is the stored row's last: row direction reversed
            position, row_dir = position + (cols - 1) * spacing[1] * row_dir, -row_dir
        if self.flip_y:
            position, col_dir = position + (rows - 1) * spacing[0] * col_dir, -col_dir
        return position, np.concatenate([row_dir, col_dir]), spacing.copy()


def turn_of(orientation: np.ndarray, rows: int, cols: int) -> Turn:
    """The ``Turn`` that brings a stored ``rows`` x ``cols`` image of this orientation to its plane's usual one."""
    (row_axis, row_sign), (col_axis, col_sign) = _USUAL_AXES[plane_of(orientation)]
    row_dir, col_dir = orientation[:3], orientation[3:]
    transpose = abs(col_dir[row_axis]) > abs(row_dir[row_axis])
    if transpose:
        row_dir, col_dir = col_dir, row_dir
    return Turn(
        rows, cols, bool(transpose), bool(row_dir[row_axis] * row_sign < 0), bool(col_dir[col_axis] * col_sign < 0)
    )
