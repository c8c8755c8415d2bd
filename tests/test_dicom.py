"""Reading a series folder: spatial order (not file name or InstanceNumber), modality LUT, loud failures."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from kaggle_utils.io import dicom
from kaggle_utils.io.dicom import (
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
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
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
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
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


def test_an_inverted_grey_scale_reads_the_right_way_round(tmp_path: Path) -> None:
    """MONOCHROME1 (white is low) is read negated: after the series' window, bright tissue is bright again."""
    pixels = np.arange(30, dtype=np.uint16).reshape(6, 5)
    for name, photometric in (("plain", "MONOCHROME2"), ("inverted", "MONOCHROME1")):
        (tmp_path / name).mkdir()
        stored = pixels if photometric == "MONOCHROME2" else 29 - pixels  # the same image in either grey scale
        _write_slice(tmp_path / name / "1.dcm", np.zeros(3), SAGITTAL_IOP, 1, stored, photometric=photometric)
    plain, inverted = (read_series(tmp_path / name).slices[0] for name in ("plain", "inverted"))
    np.testing.assert_array_equal(inverted, plain - 29)  # an offset only, which the window removes


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
    _write_slice(folder / "1.dcm", np.zeros(3), SAGITTAL_IOP, 1, np.ones((4, 4), dtype=np.uint16))
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


def test_a_corrupt_file_costs_its_slice_and_is_named(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=3)
    (tmp_path / "series" / "999.dcm").write_bytes(b"this is not a DICOM file")
    series = read_series(tmp_path / "series")
    assert series.n_slices == 3 and len(series.dropped) == 1 and "999.dcm: cannot read DICOM file" in series.dropped[0]


def test_a_truncated_file_costs_its_slice_and_is_named(tmp_path: Path) -> None:
    _shuffled_series(tmp_path / "series", n=3)
    victim = sorted((tmp_path / "series").glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-20])
    series = read_series(tmp_path / "series")
    assert series.n_slices == 2 and victim.name in series.dropped[0] and "pixel data" in series.dropped[0]


def test_a_series_of_unusable_files_is_named_with_its_first_reason(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("1.dcm", "2.dcm"):
        (folder / name).write_bytes(b"")
    with pytest.raises(SeriesError, match=r"none of its 2 files can be used \(.*1\.dcm: an empty file; and 1 more\)"):
        read_series(folder)
    with pytest.raises(SeriesError, match="none of its 2 files"):
        dicom.read_geometry(folder)


@pytest.mark.parametrize(
    ("tag", "value", "reason"),
    [
        ("ImageOrientationPatient", [1.0, 0.0, 0.0, 1.0, 0.0, 0.0], "degenerate ImageOrientationPatient"),
        ("ImageOrientationPatient", [0.0] * 6, "degenerate ImageOrientationPatient"),
        ("ImagePositionPatient", ["nan", 0.0, 0.0], "ImagePositionPatient .* is not a position"),
        ("PixelSpacing", [0.0, 0.7], "PixelSpacing .* is not positive"),
    ],
)
def test_a_slice_whose_geometry_places_it_nowhere_is_left_out(tmp_path: Path, tag: str, value: list, reason: str):
    _shuffled_series(tmp_path / "series", n=5)
    victim = sorted((tmp_path / "series").glob("*.dcm"))[2]
    ds = pydicom.dcmread(victim)
    setattr(ds, tag, value)
    ds.save_as(victim)
    for read in (read_series, dicom.read_geometry):
        found = read(tmp_path / "series")
        assert len(found.dropped) == 1 and found.dropped[0].startswith(f"{victim}: ")
        assert re.search(reason, found.dropped[0])
    series = read_series(tmp_path / "series")
    assert series.n_slices == 4 and np.all(np.diff(series.positions @ slice_normal(series.orientation)) < 0)


def test_an_image_of_another_plane_is_left_out_by_the_majority(tmp_path: Path) -> None:
    """A localiser stored as the first instance of a sagittal series: the slices keep the sagittal order."""
    positions = _shuffled_series(tmp_path / "series", n=5)
    _write_slice(tmp_path / "series" / "1.dcm", positions[2], AXIAL_IOP, 0, np.full((6, 5), 9, dtype=np.uint16))
    series = read_series(tmp_path / "series")
    assert series.n_slices == 5 and [int(s[0, 0]) for s in series.slices] == [4, 3, 2, 1, 0]
    assert series.dropped == (f"{tmp_path / 'series' / '1.dcm'}: an image in the axial plane among sagittal slices",)
    geometry = dicom.read_geometry(tmp_path / "series")
    assert len(geometry) == 5 and geometry.dropped == series.dropped
    assert dicom.stray_images([*series.dropped, f"{tmp_path}/2.dcm: an empty file"]) == 1  # counted apart


def test_a_second_copy_of_a_file_is_left_out_and_named(tmp_path: Path) -> None:
    """A file stored twice under two names counts once; two images at one position with their own numbers stay."""
    folder = tmp_path / "series"
    positions = _shuffled_series(folder, n=5)
    first = sorted(folder.glob("*.dcm"))[0]
    shutil.copy(first, folder / "999.dcm")
    series = read_series(folder)
    assert series.n_slices == 5
    assert series.dropped == (
        f"{folder / '999.dcm'}: a copy of {first.name} (the same SOPInstanceUID, position and number)",
    )
    geometry = dicom.read_geometry(folder)
    assert len(geometry) == 5 and geometry.dropped == series.dropped

    _write_slice(folder / "998.dcm", positions[2], _oblique_sagittal(), 42, np.full((6, 5), 7, dtype=np.uint16))
    assert read_series(folder).n_slices == 6 and len(dicom.read_geometry(folder)) == 6


def test_orientation_directions_are_read_at_unit_length(tmp_path: Path) -> None:
    """Directions written 1.5 times too long place every pixel where unit ones do; near-unit ones stay as written."""
    _shuffled_series(tmp_path / "unit", n=4)
    shutil.copytree(tmp_path / "unit", tmp_path / "long")
    for path in (tmp_path / "long").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.5 * float(v) for v in ds.ImageOrientationPatient]
        ds.save_as(path)
    unit, long = read_series(tmp_path / "unit"), read_series(tmp_path / "long")
    np.testing.assert_allclose(long.orientation, unit.orientation, atol=1e-12)
    np.testing.assert_allclose(long.pixel_to_world(1, 5.0, 4.0), unit.pixel_to_world(1, 5.0, 4.0), atol=1e-9)
    np.testing.assert_allclose(dicom.read_geometry(tmp_path / "long").orientations[0], unit.orientation, atol=1e-12)
    written = np.array([0.0, 0.9999, 0.0, 0.0, 0.0, -1.0])  # within the tolerance: kept bit for bit
    assert dicom.unit_directions(written) is written


def test_a_series_stored_mirrored_reads_as_one_stored_the_usual_way(tmp_path: Path) -> None:
    """A sagittal series stored facing the other way and upside down, its header true of it, reads as the usual
    one: the same pixels, positions and orientation; its axial-style geometry read agrees."""
    _shuffled_series(tmp_path / "usual", n=4)
    shutil.copytree(tmp_path / "usual", tmp_path / "turned")
    for path in (tmp_path / "turned").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels, iop = ds.pixel_array, np.asarray(ds.ImageOrientationPatient, float)
        rows, cols = pixels.shape
        spacing = np.asarray(ds.PixelSpacing, float)
        corner = np.asarray(ds.ImagePositionPatient, float) + (cols - 1) * spacing[1] * iop[:3]
        ds.ImagePositionPatient = list(corner + (rows - 1) * spacing[0] * iop[3:])
        ds.ImageOrientationPatient = list(-iop)
        ds.PixelData = np.ascontiguousarray(pixels[::-1, ::-1] + np.arange(cols, dtype=np.uint16)).tobytes()
        ds.save_as(path)
    usual, turned = read_series(tmp_path / "usual"), read_series(tmp_path / "turned")
    for a, b in zip(usual.slices, turned.slices, strict=True):
        np.testing.assert_array_equal(b, a + np.arange(a.shape[1])[::-1])  # the column ramp, turned back
    np.testing.assert_allclose(turned.positions, usual.positions, atol=1e-9)
    np.testing.assert_allclose(turned.orientation, usual.orientation, atol=1e-12)
    geometry = dicom.read_geometry(tmp_path / "turned")
    assert all(t.flip_x and t.flip_y for t in geometry.turns)
    np.testing.assert_allclose(np.sort(geometry.positions, axis=0), np.sort(usual.positions, axis=0), atol=1e-9)
    np.testing.assert_array_equal(
        dicom.read_slice(geometry.files[0]),
        turned.slices[list(turned.instance_numbers).index(geometry.instance_numbers[0])],
    )


def test_a_series_with_no_image_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "black"
    folder.mkdir()
    for k in range(3):
        _write_slice(folder / f"{k}.dcm", np.array([4.0 * k, 0, 0]), SAGITTAL_IOP, k, np.zeros((4, 4), np.uint16))
    with pytest.raises(SeriesError, match="every pixel of its 3 slices is 0: no image"):
        read_series(folder)


@pytest.mark.parametrize("reverse", [False, True])
def test_instance_numbers_with_offsets_and_gaps_do_not_change_the_order(tmp_path: Path, reverse: bool) -> None:
    """Only positions order slices: instance numbers that start at 1000, skip values, or run either way."""
    folder = tmp_path / "series"
    folder.mkdir()
    xs = [12.0, 4.0, -4.0, -12.0]  # left to right
    instances = [1001, 1004, 1010, 1011][:: -1 if reverse else 1]
    for name, k in zip(["b", "d", "a", "c"], range(4), strict=True):  # file names unrelated to both
        pixels = np.full((4, 4), 10 * k, dtype=np.uint16)
        _write_slice(folder / f"{name}.dcm", np.array([xs[k], 0.0, 0.0]), SAGITTAL_IOP, instances[k], pixels)
    series = read_series(folder)
    assert [int(s[0, 0]) for s in series.slices] == [0, 10, 20, 30]
    assert series.instance_numbers.tolist() == instances
    np.testing.assert_allclose(series.positions[:, 0], xs)


@pytest.mark.parametrize("signed", [False, True])
def test_twelve_bit_data_with_rescale(tmp_path: Path, signed: bool) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    low, high = (-2048, 2047) if signed else (0, 4095)  # the full 12-bit range
    pixels = np.linspace(low, high, 16).reshape(4, 4).astype(np.int16 if signed else np.uint16)
    _write_slice(
        folder / "1.dcm", np.zeros(3), SAGITTAL_IOP, 1, pixels, rescale=(0.5, 10.0), bits_stored=12, signed=signed
    )
    (image,) = read_series(folder).slices
    np.testing.assert_array_equal(image, pixels.astype(np.float32) * 0.5 + 10.0)


def test_sixteen_bit_values_above_int16_survive(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    pixels = np.array([[0, 1], [40000, 65535]], dtype=np.uint16)
    _write_slice(folder / "1.dcm", np.zeros(3), SAGITTAL_IOP, 1, pixels)
    np.testing.assert_array_equal(read_series(folder).slices[0], pixels.astype(np.float32))


# Lossless syntaxes with an encoder here (pydicom natively for RLE, pyjpegls, pylibjpeg-openjpeg): a synthetic
# 12-bit slice is compressed, written, and must read back bit for bit.
ENCODABLE = [
    (uid.RLELossless, 12),
    (uid.RLELossless, 16),
    (uid.JPEGLSLossless, 12),
    (uid.JPEG2000Lossless, 12),
    (uid.JPEGLSLossless, 16),
    (uid.JPEG2000Lossless, 16),
]


@pytest.mark.parametrize(("syntax", "bits"), ENCODABLE, ids=lambda v: getattr(v, "name", str(v)))
def test_compressed_series_decode_losslessly(tmp_path: Path, syntax: uid.UID, bits: int) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(bits)
    # A ramp over the full range plus noise: compressible, and it exercises the top bits. 64 px is the smallest
    # size openjpeg's default resolution levels accept.
    ramp = np.linspace(0, 2**bits - 64, 64 * 48).reshape(64, 48)
    originals = [(ramp + rng.integers(0, 64, ramp.shape)).astype(np.uint16) for _ in range(3)]
    for k, pixels in enumerate(originals):
        path = folder / f"{k + 1}.dcm"
        _write_slice(path, np.array([4.0 * k, 0, 0]), SAGITTAL_IOP, k + 1, pixels, bits_stored=bits)
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    series = read_series(folder)
    for got, want in zip(series.slices, originals[::-1], strict=True):  # x descending: last written first
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_jpeg_lossless_decodes() -> None:
    """No JPEG Lossless (process 14) encoder exists for pydicom, so decode pydicom's bundled example instead."""
    for syntax in (uid.JPEGLosslessSV1, uid.JPEGLossless):
        assert get_decoder(syntax).is_available, get_decoder(syntax).missing_dependencies
    path = Path(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGLosslessSV1
    dicom.check_decodable(ds, path)
    pixels = ds.pixel_array
    assert pixels.shape == (100, 100, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]


def _write_encapsulated(path: Path, syntax: uid.UID) -> None:
    _write_slice(path, np.zeros(3), SAGITTAL_IOP, 1, np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_syntax_without_any_decoder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    _write_encapsulated(folder / "7.dcm", uid.MPEG2MPML)
    with pytest.raises(SeriesError, match=r"7\.dcm.*1\.2\.840\.10008\.1\.2\.4\.100"):
        read_series(folder)


def test_syntax_with_missing_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without pylibjpeg/pyjpegls: the error names the file, the syntax and what to install."""

    class Unavailable:
        is_available = False
        missing_dependencies = ["pyjpegls - requires pyjpegls>=1.2"]

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Unavailable())
    folder = tmp_path / "series"
    folder.mkdir()
    _write_encapsulated(folder / "3.dcm", uid.JPEGLSLossless)
    with pytest.raises(SeriesError, match=r"3\.dcm.*JPEG-LS Lossless.*pyjpegls"):
        read_series(folder)
