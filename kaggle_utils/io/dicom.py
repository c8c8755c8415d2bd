"""Read one DICOM series folder into slices ordered in space, with the geometry that places them.

Slices are ordered by where they are, never by file name or InstanceNumber: their positions are
projected on the slice normal and sorted in descending order. The normal is signed so that its
largest component is positive, so for a sagittal series index 0 is the patient's left-most slice
(DICOM LPS: +x = patient left), the order the solution's stage-2 models assume.

Every image is read turned to its plane's usual orientation, and its geometry with it (``geometry.Turn``; where a
slice lies, pixel <-> world: ``geometry``).

A file that cannot be used (unreadable header or pixels, geometry that places it nowhere: a degenerate
orientation, a position that is not a number, a spacing that is not positive) costs its slice, not its series:
it is left out and named in the series' ``dropped`` list, and so is an image of another plane stored in the
series (a localiser), found against the plane of the series' majority, and a second copy of a file (the same
SOPInstanceUID, position and InstanceNumber under another name). Only a folder with no usable file, or whose slices
hold no image at all (every pixel equal), is a ``SeriesError``. ImageOrientationPatient's two directions are scaled
to unit length where a header writes them longer or shorter (``geometry.unit_directions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, get_decoder

from kaggle_utils.io.geometry import (
    PLANE_NAMES,
    TIE_TOLERANCE_MM,
    Geometry,
    Turn,
    order_slices,
    pixel_to_world,
    plane_of,
    slice_normal,
    turn_of,
    unit_directions,
    world_to_pixel,
)
from kaggle_utils.io.weighting import timings, weighting_of

__all__ = [
    "Geometry",
    "PLANE_NAMES",
    "majority_plane",
    "Series",
    "SeriesError",
    "Turn",
    "check_decodable",
    "dicom_files",
    "file_turn",
    "in_plane",
    "order_slices",
    "pixel_to_world",
    "read_geometry",
    "read_header",
    "read_series",
    "read_slice",
    "slice_normal",
    "stray_images",
    "world_to_pixel",
]

_MIN_SINE = 0.5
"""ImageOrientationPatient's row and column directions must be this far from parallel (sine of their angle; they
should be perpendicular): below it the orientation places the slice nowhere."""


_OFF_PLANE = "plane among"
"""The words naming, in a series' ``dropped`` lines, an image of another plane than the series' majority."""


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
    dropped: tuple[str, ...] = ()  # "file: why" of each file left out (``read_series``)
    weighting: str | None = None  # "t1" / "t2" where its first slice's header timings say so clearly, else None
    timings: str = ""  # those timings, as quoted in a message

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

    @property
    def plane(self) -> str:
        """The ``PLANE_NAMES`` entry its slices lie in (those of another plane were left out on reading)."""
        return plane_of(self.orientation)

    def span_mm(self) -> float:
        """Distance between its outermost slices along the normal: 0 when every slice claims one position, and
        the left-to-right order then comes from the instance numbers alone."""
        heights = self.positions @ self.normal
        return float(heights.max() - heights.min()) if len(heights) else 0.0

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


def read_header(path: Path) -> pydicom.Dataset:
    """The header of one file, without its pixels (fast on the ~0.5 MB RSNA slices)."""
    return _dataset(path, stop_before_pixels=True)


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
    check_geometry(position, orientation, spacing, path)
    return position, unit_directions(orientation), spacing


def _turned_geometry(
    ds: pydicom.Dataset, path: Path, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Turn]:
    """A file's geometry once its ``shape`` (rows, cols) image is turned to its plane's usual orientation, and the
    turn (``geometry.turn_of``)."""
    position, orientation, spacing = _geometry(ds, path)
    turn = turn_of(orientation, *shape)
    return (*turn.geometry(position, orientation, spacing), turn)


def file_turn(path: Path) -> Turn:
    """How a file's image is turned on reading, from its header alone (``Turn(rows, cols)``, no turn, where its
    geometry cannot be used); a ``SeriesError`` when the file cannot be read."""
    ds = read_header(path)
    try:
        return _turned_geometry(ds, path, _header_shape(ds))[3]
    except (SeriesError, ValueError):
        return Turn(*_header_shape(ds))


def _header_shape(ds: pydicom.Dataset) -> tuple[int, int]:
    return int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)


def check_geometry(position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray, path: Path) -> None:
    """Fail, naming the file and the tag, when a slice's geometry cannot place it in space."""
    if not np.isfinite(position).all():
        raise SeriesError(f"{path}: ImagePositionPatient {position.tolist()} is not a position")
    row, column = orientation[:3], orientation[3:]
    lengths = np.linalg.norm(row), np.linalg.norm(column)
    usable = np.isfinite(orientation).all() and min(lengths) > 0.5
    if not usable or np.linalg.norm(np.cross(row / lengths[0], column / lengths[1])) < _MIN_SINE:
        raise SeriesError(f"{path}: degenerate ImageOrientationPatient {orientation.tolist()}")
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise SeriesError(f"{path}: PixelSpacing {spacing.tolist()} is not positive")


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
    pixels = pixels.astype(np.float32, copy=False)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        # Low values are white here: negated, the series' percentile window shows it as every other series.
        pixels = -pixels
    return pixels


def dicom_files(folder: Path) -> list[Path]:
    """The ``*.dcm`` files of a series folder, numeric names in numeric order (a ``SeriesError`` when there are
    none, or no folder)."""
    if not folder.is_dir():
        raise SeriesError(f"{folder}: series folder does not exist")
    files = sorted(folder.glob("*.dcm"), key=_file_sort_key)
    if not files:
        raise SeriesError(f"{folder}: series folder holds no .dcm files")
    return files


def read_geometry(folder: Path) -> Geometry:
    """The geometry of every ``*.dcm`` in a series folder, read from the headers without decoding pixels; a file
    whose header cannot be used is left out and named in ``dropped`` (none usable: ``SeriesError``)."""
    files = dicom_files(Path(folder))
    positions, orientations, spacings, shapes, instances, kept, dropped, turns = [], [], [], [], [], [], [], []
    copies = _Copies()
    for path in files:
        try:
            ds = read_header(path)
            position, orientation, spacing, turn = _turned_geometry(ds, path, _header_shape(ds))
            copies.check(ds, position, path)
        except SeriesError as err:
            dropped.append(str(err))
            continue
        positions.append(position)
        orientations.append(orientation)
        spacings.append(spacing)
        shapes.append(turn.shape)
        instances.append(_instance_number(ds))
        kept.append(path)
        turns.append(turn)
    if not kept:
        raise SeriesError(f"{folder}: none of its {len(files)} files can be used ({_first(dropped)})")
    on_plane, off_plane = majority_plane(orientations, kept)
    geometry = Geometry(
        np.stack(positions),
        np.stack(orientations),
        np.stack(spacings),
        np.asarray(shapes, dtype=np.int64).reshape(-1, 2),
        np.asarray(instances, dtype=np.int64),
        tuple(kept),
        tuple(dropped + off_plane),
        tuple(turns),
    )
    return geometry.take(np.flatnonzero(on_plane))


def _instance_number(ds: pydicom.Dataset) -> int:
    """InstanceNumber, 0 where it is missing or not a number (only ties in position fall back to it)."""
    try:
        return int(getattr(ds, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _first(dropped: list[str]) -> str:
    more = f"; and {len(dropped) - 1} more" if len(dropped) > 1 else ""
    return (dropped[0] if dropped else "no file") + more


def read_slice(path: Path) -> np.ndarray:
    """The pixels of one file as a 2-D float32 image (modality LUT applied), turned as ``read_geometry`` places it."""
    ds = _dataset(path)
    pixels = _pixels(ds, path)
    return _turned_geometry(ds, path, pixels.shape)[3].image(pixels)


@dataclass(frozen=True)
class _Slice:
    """One usable file of a series."""

    pixels: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    instance: int
    description: str
    path: Path
    weighting: str | None = None  # what its header's timings say (``weighting.weighting_of``)
    timings: str = ""


def _dataset(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """A file read by pydicom, or a ``SeriesError`` naming it (an empty file says so)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as err:
        empty = path.is_file() and path.stat().st_size == 0
        raise SeriesError(f"{path}: {'an empty file' if empty else f'cannot read DICOM file ({err})'}") from err


def _read_file(ds: pydicom.Dataset, path: Path) -> _Slice:
    pixels = _pixels(ds, path)
    position, orientation, spacing, turn = _turned_geometry(ds, path, pixels.shape)
    description = str(getattr(ds, "SeriesDescription", "") or "")
    pixels, instance = turn.image(pixels), _instance_number(ds)
    return _Slice(pixels, position, orientation, spacing, instance, description, path, weighting_of(ds), timings(ds))


class _Copies:
    """The files of a series read so far, by what makes a file a second copy of another: its SOPInstanceUID, its
    position and its InstanceNumber all equal (a file copied under another name; distinct slices that share a
    position keep their instance numbers, and an anonymiser that blanks the UIDs leaves them apart too)."""

    def __init__(self) -> None:
        self.first: dict[tuple, Path] = {}

    def check(self, ds: pydicom.Dataset, position: np.ndarray, path: Path) -> None:
        """Remember ``path``, or fail naming the earlier file it copies."""
        uid = str(getattr(ds, "SOPInstanceUID", "") or "")
        key = (uid, *np.round(position / TIE_TOLERANCE_MM).astype(np.int64).tolist(), _instance_number(ds))
        if key in self.first:
            raise SeriesError(
                f"{path}: a copy of {self.first[key].name} (the same SOPInstanceUID, position and number)"
            )
        self.first[key] = path


def majority_plane(orientations: Sequence[np.ndarray], files: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
    """``in_plane`` of the plane most of the slices lie in (ties: the first file's)."""
    planes = [plane_of(o) for o in orientations]
    majority = max(dict.fromkeys(planes), key=planes.count) if planes else ""
    return in_plane(orientations, files, majority)


def in_plane(
    orientations: Sequence[np.ndarray], files: Sequence[Path | str], plane: str
) -> tuple[np.ndarray, list[str]]:
    """(N,) bool: the slices in ``plane``, and a line naming each of the others (a localiser stored in the series,
    say; counted by ``stray_images``)."""
    planes = [plane_of(o) for o in orientations]
    pairs = zip(files, planes, strict=True)
    lines = [f"{file}: an image in the {other} {_OFF_PLANE} {plane} slices" for file, other in pairs if other != plane]
    return np.array([p == plane for p in planes], dtype=bool), lines


def stray_images(lines: Sequence[str]) -> int:
    """How many of some ``dropped`` lines (or fault messages quoting them) name an image of another plane."""
    return sum(_OFF_PLANE in str(line) for line in lines)


def read_series(folder: Path) -> Series:
    """Read every ``*.dcm`` of a series folder, ordered left to right (sagittal) / top to bottom (axial); files
    that cannot be used are left out and listed in ``Series.dropped`` (see the module doc)."""
    folder = Path(folder)
    files = dicom_files(folder)
    read, dropped = [], []
    copies = _Copies()
    for path in files:
        try:
            ds = _dataset(path)
            file = _read_file(ds, path)
            copies.check(ds, file.position, path)
            read.append(file)
        except SeriesError as err:
            dropped.append(str(err))
    keep, off_plane = majority_plane([s.orientation for s in read], [s.path for s in read])
    read = [s for s, kept in zip(read, keep, strict=True) if kept]
    dropped += off_plane
    if not read:
        raise SeriesError(f"{folder}: none of its {len(files)} files can be used ({_first(dropped)})")
    if all(s.pixels.min() == s.pixels.max() == read[0].pixels.flat[0] for s in read):
        raise SeriesError(f"{folder}: every pixel of its {len(read)} slices is {read[0].pixels.flat[0]:g}: no image")

    positions = np.stack([s.position for s in read])
    instances = np.asarray([s.instance for s in read], dtype=np.int64)
    order = order_slices(positions, read[0].orientation, instances)
    return Series(
        slices=[read[i].pixels for i in order],
        positions=positions[order],
        orientation=read[order[0]].orientation,
        pixel_spacing=np.stack([s.spacing for s in read])[order],
        instance_numbers=instances[order],
        description=next((s.description for s in read if s.description), ""),
        folder=folder,
        dropped=tuple(dropped),
        weighting=read[order[0]].weighting,
        timings=read[order[0]].timings,
    )
