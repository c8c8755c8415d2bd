"""Acquisition: the ``SeriesPlan`` of one series (matrix, slice positions and orientations, bit depth, noise),
``sagittal_plan`` and ``axial_plan`` that place a series around a ``Phantom`` the way scanners do, and the
writing of every rendered slice as a DICOM file with Rician noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from kaggle_utils.constants import AXIAL_T2, SAGITTAL_T1
from kaggle_utils.dev.synthetic.anatomy import LABELLED_DISCS, Phantom
from kaggle_utils.dev.synthetic.render import T1, T2, render
from kaggle_utils.dicom import slice_normal, world_to_pixel

# --- acquisition -------------------------------------------------------------------------------------------
_SAGITTAL_MATRICES = ((256, 256), (320, 320), (384, 384), (384, 384), (384, 320), (320, 256))
_AXIAL_MATRICES = ((256, 256), (320, 320), (320, 320))


@dataclass
class SeriesPlan:
    """Geometry and acquisition settings of one series; slice k is stored as ``{instance_numbers[k]}.dcm``."""

    series_id: int
    description: str
    series_number: int
    weighting: int
    rows: int
    cols: int
    pixel_spacing: np.ndarray  # (2,) row spacing, column spacing
    positions: np.ndarray  # (N, 3) ImagePositionPatient
    orientations: np.ndarray  # (N, 6) ImageOrientationPatient
    instance_numbers: np.ndarray  # (N,)
    thickness: float
    spacing: float
    bits_stored: int
    max_value: float
    noise: float

    def pixel_grid(self, k: int) -> np.ndarray:
        """World coordinates (rows, cols, 3) of the pixel centres of slice k."""
        iop = self.orientations[k]
        along_row = (np.arange(self.cols)[:, None] * self.pixel_spacing[1] * iop[:3]).astype(np.float32)
        along_col = (np.arange(self.rows)[:, None] * self.pixel_spacing[0] * iop[3:]).astype(np.float32)
        return self.positions[k].astype(np.float32) + along_col[:, None, :] + along_row[None, :, :]

    def project(self, world: np.ndarray) -> tuple[int, float, float]:
        """Instance number of the slice closest to a world point and the point's pixel x, y on it."""
        offsets = [
            abs(float((world - p) @ slice_normal(o))) for p, o in zip(self.positions, self.orientations, strict=True)
        ]
        k = int(np.argmin(offsets))
        x, y = world_to_pixel(self.positions[k], self.orientations[k], self.pixel_spacing, world)
        return int(self.instance_numbers[k]), float(x), float(y)


def _small_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _top_left(centre: np.ndarray, iop: np.ndarray, spacing: float, rows: int, cols: int) -> np.ndarray:
    return centre - (cols - 1) / 2 * spacing * iop[:3] - (rows - 1) / 2 * spacing * iop[3:]


def _acquisition(rng: np.random.Generator) -> dict:
    bits = 12 if rng.random() < 0.3 else 16
    top = 4095 if bits == 12 else 65535
    return {
        "bits_stored": bits,
        "max_value": float(min(rng.uniform(800, 4000), top * 0.9)),
        "noise": float(rng.uniform(0.015, 0.035)),
    }


# How far the spine's centre wanders in a sagittal field of view (fraction of the FOV, each in-plane axis). Kept
# modest so that a localiser trained from scratch on a few dozen studies in CPU minutes finds the levels.
SAGITTAL_CENTRE_JITTER = 0.04


def sagittal_plan(rng: np.random.Generator, ph: Phantom, series_id: int, description: str, number: int) -> SeriesPlan:
    """15-19 sagittal slices 3.5-4.5 mm apart covering about +-35 mm, sometimes a little oblique."""
    rows, cols = _SAGITTAL_MATRICES[rng.integers(len(_SAGITTAL_MATRICES))]
    fov = rng.uniform(260, 320)
    spacing_px = round(fov / max(rows, cols), 6)
    n = int(rng.integers(15, 20))
    gap = float(np.clip(rng.uniform(60, 76) / (n - 1), 3.5, 4.5))
    rotation = _small_rotation(rng, 4.0) if rng.random() < 0.5 else np.eye(3)
    iop = np.round(np.concatenate([rotation @ [0.0, 1.0, 0.0], rotation @ [0.0, 0.0, -1.0]]), 6)
    left = slice_normal(iop)
    middle = LABELLED_DISCS[len(LABELLED_DISCS) // 2]
    wall = ph.landmark(middle, ph.posterior_wall(middle), 0.0, 0.0)
    jitter = SAGITTAL_CENTRE_JITTER * fov
    centre = wall + np.array([rng.normal(0, 1.5), rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)])
    offsets = (np.arange(n) - (n - 1) / 2) * gap  # ascending towards patient left: slice 0 is right-most
    positions = np.round([_top_left(centre + o * left, iop, spacing_px, rows, cols) for o in offsets], 4)
    right_first = rng.random() < 0.5  # scanners disagree on which side instance 1 is
    instances = np.arange(1, n + 1) if right_first else np.arange(n, 0, -1)
    return SeriesPlan(
        series_id=series_id,
        description=description,
        series_number=number,
        weighting=T1 if description == SAGITTAL_T1 else T2,
        rows=rows,
        cols=cols,
        pixel_spacing=np.array([spacing_px, spacing_px]),
        positions=positions,
        orientations=np.tile(iop, (n, 1)),
        instance_numbers=instances,
        thickness=round(gap * rng.uniform(0.85, 1.0), 3),
        spacing=round(gap, 3),
        **_acquisition(rng),
    )


def axial_plan(rng: np.random.Generator, ph: Phantom, series_id: int, number: int) -> SeriesPlan:
    """Three slices through each labelled disc, each stack angled along its disc, top to bottom."""
    rows, cols = _AXIAL_MATRICES[rng.integers(len(_AXIAL_MATRICES))]
    fov = rng.uniform(180, 220)
    spacing_px = round(fov / cols, 6)
    gap = float(rng.uniform(3.0, 4.0))
    twist = np.deg2rad(rng.normal(0, 2.0))  # small patient rotation about the long axis
    row_cos = np.array([np.cos(twist), np.sin(twist), 0.0])
    shift = np.array([rng.normal(0, 3), rng.uniform(-0.05, 0.05) * fov, 0.0])
    positions, orientations = [], []
    for disc in LABELLED_DISCS:
        col_cos = ph.disc_ap[disc] - (ph.disc_ap[disc] @ row_cos) * row_cos
        iop = np.round(np.concatenate([row_cos, col_cos / np.linalg.norm(col_cos)]), 6)
        for height in (gap, 0.0, -gap):
            centre = ph.landmark(disc, ph.posterior_wall(disc) + 5.0, height, 0.0) + shift
            positions.append(_top_left(centre, iop, spacing_px, rows, cols))
            orientations.append(iop)
    n = len(positions)
    return SeriesPlan(
        series_id=series_id,
        description=AXIAL_T2,
        series_number=number,
        weighting=T2,
        rows=rows,
        cols=cols,
        pixel_spacing=np.array([spacing_px, spacing_px]),
        positions=np.round(positions, 4),
        orientations=np.asarray(orientations),
        instance_numbers=np.arange(1, n + 1),
        thickness=round(gap * 0.9, 3),
        spacing=round(gap, 3),
        **_acquisition(rng),
    )


def _pixels(plan: SeriesPlan, ph: Phantom, k: int, rng: np.random.Generator) -> np.ndarray:
    signal = render(ph, plan.pixel_grid(k), plan.weighting)
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * plan.noise
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)  # magnitude images carry Rician noise
    top = 2**plan.bits_stored - 1
    return np.clip(np.rint(magnitude * plan.max_value), 0, top).astype(np.uint16)


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def _write_slice(path: Path, plan: SeriesPlan, k: int, pixels: np.ndarray, study_id: int, seed: int) -> None:
    instance = int(plan.instance_numbers[k])
    sop_uid = _uid(seed, study_id, plan.series_id, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, study_id)
    ds.SeriesInstanceUID = _uid(seed, study_id, plan.series_id)
    ds.FrameOfReferenceUID = _uid(seed, study_id, "frame")
    ds.Modality = "MR"
    ds.PatientID = str(study_id)
    ds.StudyID = str(study_id)[:16]
    ds.SeriesDescription = plan.description
    ds.SeriesNumber = plan.series_number
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in plan.positions[k]]
    ds.ImageOrientationPatient = [float(v) for v in plan.orientations[k]]
    ds.PixelSpacing = [float(v) for v in plan.pixel_spacing]
    ds.SliceThickness = plan.thickness
    ds.SpacingBetweenSlices = plan.spacing
    ds.Rows, ds.Columns = plan.rows, plan.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = plan.bits_stored
    ds.HighBit = plan.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path, plan: SeriesPlan, ph: Phantom, study_id: int, seed: int, rng: np.random.Generator
) -> None:
    """Render and save every slice of a series as ``{InstanceNumber}.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(len(plan.positions)):
        path = folder / f"{int(plan.instance_numbers[k])}.dcm"
        _write_slice(path, plan, k, _pixels(plan, ph, k, rng), study_id, seed)
