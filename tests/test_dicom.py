"""Reading a series folder: spatial order (not file name or InstanceNumber), modality LUT, loud failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from kaggle_utils.dicom import (
    SeriesError,
    order_slices,
    pixel_to_world,
    read_series,
    slice_normal,
    world_to_pixel,
)

SAGITTAL_IOP = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
AXIAL_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _rotation(degrees_z: float, degrees_y: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_y)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rz @ ry


def _oblique_sagittal() -> np.ndarray:
    rotation = _rotation(8.0, -6.0)
    return np.concatenate([rotation @ SAGITTAL_IOP[:3], rotation @ SAGITTAL_IOP[3:]])


def _write_slice(
    path: Path,
    position: np.ndarray,
    orientation: np.ndarray,
    instance: int,
    pixels: np.ndarray,
    rescale: tuple[float, float] | None = None,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesDescription = "Sagittal T1"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [0.8, 0.7]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _shuffled_series(folder: Path, n: int = 7, rescale: tuple[float, float] | None = None) -> np.ndarray:
    """Write n oblique sagittal slices; slice k's pixels hold k. Returns positions by k (k=0 right-most)."""
    folder.mkdir(parents=True, exist_ok=True)
    orientation = _oblique_sagittal()
    normal = slice_normal(orientation)
    in_plane = 3.0 * orientation[:3] - 5.0 * orientation[3:]  # positions also drift within the plane
    positions = np.array([[2.0, -40.0, 60.0] + (k - n // 2) * 4.0 * normal + k * in_plane for k in range(n)])
    rng = np.random.default_rng(0)
    names = rng.permutation(np.arange(100, 100 + n))  # file names unrelated to position
    for k in range(n):
        instance = k + 1  # instance 1 is the right-most slice: the reverse of the left-to-right order
        pixels = np.full((6, 5), k, dtype=np.uint16)
        _write_slice(folder / f"{names[k]}.dcm", positions[k], orientation, instance, pixels, rescale)
    return positions


def test_slice_normal_points_left_for_sagittal_and_up_for_axial() -> None:
    np.testing.assert_allclose(slice_normal(SAGITTAL_IOP), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(slice_normal(-SAGITTAL_IOP), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(slice_normal(AXIAL_IOP), [0.0, 0.0, 1.0])
    normal = slice_normal(_oblique_sagittal())
    assert normal[0] > 0.9 and np.isclose(np.linalg.norm(normal), 1.0)


def test_order_slices_descending_projection_ties_by_instance() -> None:
    positions = np.array([[-4.0, 0, 0], [8.0, 0, 0], [8.0, 1, 0], [0.0, 0, 0]])
    order = order_slices(positions, SAGITTAL_IOP, instance_numbers=np.array([1, 9, 3, 2]))
    assert order.tolist() == [2, 1, 3, 0]  # x = 8 (instance 3), x = 8 (instance 9), 0, -4


def test_read_series_orders_left_to_right_whatever_names_and_instances(tmp_path: Path) -> None:
    positions = _shuffled_series(tmp_path / "series")
    series = read_series(tmp_path / "series")

    assert series.n_slices == len(positions)
    projection = series.positions @ slice_normal(series.orientation)
    assert np.all(np.diff(projection) < 0)
    assert np.isclose(projection[0], (positions @ slice_normal(series.orientation)).max())
    # Slice k was written with value k and k = 0 is right-most, so left to right reads n-1 .. 0.
    assert [int(s[0, 0]) for s in series.slices] == list(range(len(positions) - 1, -1, -1))
    assert series.instance_numbers.tolist() == list(range(len(positions), 0, -1))
    assert series.description == "Sagittal T1"
    assert series.volume().shape == (len(positions), 6, 5)
    assert series.volume().dtype == np.float32
    np.testing.assert_allclose(series.pixel_spacing[0], [0.8, 0.7])


def test_read_series_applies_rescale_slope_and_intercept(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=3, rescale=(2.5, -100.0))
    series = read_series(tmp_path / "series")
    assert [float(s[0, 0]) for s in series.slices] == [2 * 2.5 - 100, 1 * 2.5 - 100, 0 * 2.5 - 100]
    assert all(s.dtype == np.float32 for s in series.slices)


def test_pixel_world_round_trip_and_nearest_slice(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=5)
    series = read_series(tmp_path / "series")
    world = series.pixel_to_world(2, np.array([1.5, 3.0]), np.array([4.0, 0.5]))
    np.testing.assert_allclose(series.world_to_pixel(2, world), [[1.5, 4.0], [3.0, 0.5]], atol=1e-9)
    assert series.nearest_slice(world[0]) == 2
    # PixelSpacing is (row spacing, column spacing): one column step moves col_spacing along row_cos.
    step = pixel_to_world(series.positions[0], series.orientation, [0.8, 0.7], 1.0, 0.0) - series.positions[0]
    np.testing.assert_allclose(step, 0.7 * series.orientation[:3])
    np.testing.assert_allclose(
        world_to_pixel(series.positions[0], series.orientation, [0.8, 0.7], series.positions[0] + step),
        [1.0, 0.0],
        atol=1e-9,
    )


def test_volume_refuses_mixed_slice_sizes(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    _write_slice(folder / "1.dcm", np.zeros(3), SAGITTAL_IOP, 1, np.zeros((4, 4), dtype=np.uint16))
    _write_slice(folder / "2.dcm", np.array([4.0, 0, 0]), SAGITTAL_IOP, 2, np.zeros((4, 6), dtype=np.uint16))
    series = read_series(folder)
    assert series.shapes == [(4, 6), (4, 4)]
    with pytest.raises(SeriesError, match="differ in size"):
        series.volume()


def test_empty_or_missing_folder_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty_series"
    empty.mkdir()
    with pytest.raises(SeriesError, match="empty_series"):
        read_series(empty)
    with pytest.raises(SeriesError, match="not_there"):
        read_series(tmp_path / "not_there")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=3)
    (tmp_path / "series" / "999.dcm").write_bytes(b"this is not a DICOM file")
    with pytest.raises(SeriesError, match="999.dcm"):
        read_series(tmp_path / "series")


def test_truncated_pixel_data_is_named(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=3)
    victim = sorted((tmp_path / "series").glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-20])
    with pytest.raises(SeriesError, match=victim.name):
        read_series(tmp_path / "series")
