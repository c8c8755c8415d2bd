"""Read one DICOM series folder into slices ordered in space, with the geometry that places them.

Slices are ordered by where they are, never by file name or InstanceNumber: their positions are
projected on the slice normal and sorted in descending order. The normal is signed so that its
largest component is positive, so for a sagittal series index 0 is the patient's left-most slice
(DICOM LPS: +x = patient left), the order the solution's stage-2 models assume.

Pixel <-> world: pixel (x = column, y = row) of a slice with ImagePositionPatient ``ipp``,
ImageOrientationPatient ``(row_cos, col_cos)`` and PixelSpacing ``(row spacing, column spacing)``
lies at ``ipp + x * col_spacing * row_cos + y * row_spacing * col_cos`` (mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, get_decoder

__all__ = [
    "Geometry",
    "Series",
    "SeriesError",
    "check_decodable",
    "order_slices",
    "pixel_to_world",
    "read_geometry",
    "read_header",
    "read_series",
    "read_slice",
    "slice_normal",
    "world_to_pixel",
]

# Ties in the projection closer than this (mm) count as equal and fall back to InstanceNumber, so
# that float noise in the headers cannot shuffle slices that share a position.
_TIE_TOLERANCE_MM = 1e-3


class SeriesError(RuntimeError):
    """A series folder or one of its files that cannot be read as an ordered stack of slices."""


@dataclass
class Series:
    """One series, slices ordered by position along the slice normal (descending, see module doc)."""

    slices: list[np.ndarray]  # 2-D float32 each, modality LUT applied
    positions: np.ndarray  # (N, 3) ImagePositionPatient, mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient of the first file read
    pixel_spacing: np.ndarray  # (N, 2) row spacing, column spacing, mm
    instance_numbers: np.ndarray  # (N,)
    description: str
    folder: Path

    @property
    def geometry(self) -> Geometry:
        """Where its slices lie, in its order (the geometry's ``files`` stay empty: the pixels are read)."""
        n = len(self.slices)
        return Geometry(
            self.positions,
            np.tile(self.orientation, (n, 1)),
            self.pixel_spacing,
            np.asarray([image.shape for image in self.slices], dtype=np.int64).reshape(-1, 2),
            self.instance_numbers,
        )

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(s.shape) for s in self.slices]

    @property
    def normal(self) -> np.ndarray:
        return slice_normal(self.orientation)

    def volume(self) -> np.ndarray:
        """(N, H, W) float32 stack; all slices must have the same size."""
        shapes = set(self.shapes)
        if len(shapes) > 1:
            raise SeriesError(f"{self.folder}: slices differ in size {sorted(shapes)}, cannot stack them")
        return np.stack(self.slices).astype(np.float32, copy=False)

    def pixel_to_world(self, index: int, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """World mm of pixel(s) (x = column, y = row) on the slice at ``index`` of this ordering."""
        return pixel_to_world(self.positions[index], self.orientation, self.pixel_spacing[index], x, y)

    def world_to_pixel(self, index: int, world: np.ndarray) -> np.ndarray:
        """(..., 2) pixel x, y of world point(s) projected onto the slice at ``index``."""
        return world_to_pixel(self.positions[index], self.orientation, self.pixel_spacing[index], world)

    def nearest_slice(self, world: np.ndarray) -> int:
        """Index of the slice whose plane is closest to a world point."""
        offsets = (np.asarray(world, dtype=np.float64) - self.positions) @ self.normal
        return int(np.argmin(np.abs(offsets)))


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


def order_slices(
    positions: np.ndarray, orientation: Sequence[float] | np.ndarray, instance_numbers: np.ndarray | None = None
) -> np.ndarray:
    """Indices that sort slices by descending projection on :func:`slice_normal`, ties by instance number."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    projection = np.round(positions @ slice_normal(orientation) / _TIE_TOLERANCE_MM)
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


def read_header(path: Path) -> pydicom.Dataset:
    """The header of one file, without its pixels (fast on the ~0.5 MB RSNA slices)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise SeriesError(f"{path}: cannot read DICOM header ({err})") from err


def _file_sort_key(path: Path) -> tuple[int, int | str]:
    # Numeric names sort as numbers ("2.dcm" before "10.dcm"); only the read order depends on it.
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.name)


def _geometry(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64).reshape(3)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64).reshape(6)
        spacing = np.asarray(ds.PixelSpacing, dtype=np.float64).reshape(2)
    except (AttributeError, ValueError, TypeError) as err:
        raise SeriesError(f"{path}: missing or malformed geometry tag ({err})") from err
    return position, orientation, spacing


def check_decodable(ds: pydicom.Dataset, path: Path) -> None:
    """Fail with the file and its transfer syntax when no installed plugin can decode its pixel data.

    Real series come as RLE, JPEG Lossless, JPEG-LS or JPEG 2000 as well as uncompressed; the decoders
    are optional pydicom plugins, so a missing one must say which syntax needs which package.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return  # pydicom falls back to the dataset's own encoding flags
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise SeriesError(f"{path}: no pixel decoder exists for transfer syntax {syntax} ({err})") from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise SeriesError(f"{path}: no installed decoder for transfer syntax {syntax.name} ({syntax}): {missing}")


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    check_decodable(ds, path)
    try:
        pixels = apply_modality_lut(ds.pixel_array, ds)
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown transfer syntax")
        raise SeriesError(f"{path}: cannot decode pixel data ({syntax}): {err}") from err
    if pixels.ndim != 2:
        raise SeriesError(f"{path}: expected one 2-D grey frame, got pixel array of shape {pixels.shape}")
    return pixels.astype(np.float32, copy=False)


@dataclass
class Geometry:
    """Where every slice of a series lies, from its headers alone, in file order (``order_slices`` sorts it)."""

    positions: np.ndarray  # (N, 3) ImagePositionPatient, mm
    orientations: np.ndarray  # (N, 6) ImageOrientationPatient of each slice (blocks of an axial series differ)
    pixel_spacing: np.ndarray  # (N, 2) row spacing, column spacing, mm
    shapes: np.ndarray  # (N, 2) Rows, Columns
    instance_numbers: np.ndarray  # (N,)
    files: tuple[Path, ...] = ()  # empty for the geometry of a series read in full (``Series.geometry``)

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
        )


def _dicom_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SeriesError(f"{folder}: series folder does not exist")
    files = sorted(folder.glob("*.dcm"), key=_file_sort_key)
    if not files:
        raise SeriesError(f"{folder}: series folder holds no .dcm files")
    return files


def read_geometry(folder: Path) -> Geometry:
    """The geometry of every ``*.dcm`` in a series folder, read from the headers without decoding pixels."""
    files = _dicom_files(Path(folder))
    positions, orientations, spacings, shapes, instances = [], [], [], [], []
    for path in files:
        ds = read_header(path)
        position, orientation, spacing = _geometry(ds, path)
        positions.append(position)
        orientations.append(orientation)
        spacings.append(spacing)
        shapes.append((int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)))
        instances.append(int(getattr(ds, "InstanceNumber", 0) or 0))
    return Geometry(
        np.stack(positions),
        np.stack(orientations),
        np.stack(spacings),
        np.asarray(shapes, dtype=np.int64).reshape(-1, 2),
        np.asarray(instances, dtype=np.int64),
        tuple(files),
    )


def read_slice(path: Path) -> np.ndarray:
    """The pixels of one file as a 2-D float32 image (modality LUT applied)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise SeriesError(f"{path}: cannot read DICOM file ({err})") from err
    return _pixels(ds, path)


def read_series(folder: Path) -> Series:
    """Read every ``*.dcm`` of a series folder, ordered left to right (sagittal) / top to bottom (axial)."""
    folder = Path(folder)
    files = _dicom_files(folder)

    slices, positions, orientations, spacings, instances = [], [], [], [], []
    description = ""
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:
            raise SeriesError(f"{path}: cannot read DICOM file ({err})") from err
        position, orientation, spacing = _geometry(ds, path)
        slices.append(_pixels(ds, path))
        positions.append(position)
        orientations.append(orientation)
        spacings.append(spacing)
        instances.append(int(getattr(ds, "InstanceNumber", 0) or 0))
        description = description or str(getattr(ds, "SeriesDescription", "") or "")

    positions_arr = np.stack(positions)
    instance_arr = np.asarray(instances, dtype=np.int64)
    order = order_slices(positions_arr, orientations[0], instance_arr)
    return Series(
        slices=[slices[i] for i in order],
        positions=positions_arr[order],
        orientation=orientations[order[0]],
        pixel_spacing=np.stack(spacings)[order],
        instance_numbers=instance_arr[order],
        description=description,
        folder=folder,
    )
