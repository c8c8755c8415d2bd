"""Acquisition: the ``SeriesPlan`` of one series (matrix, slice positions and orientations, bit depth, noise),
``sagittal_plan`` and ``axial_plan`` that place a series around a ``Phantom`` the way scanners do (with the
competition's oddities: a localiser stored as a sagittal series' first instance, upper axial slabs sharing one
orientation), ``axial_coverage`` (how many axial series a study has and which levels and sides each carries), and
the writing of every rendered slice as a DICOM file with Rician noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from kaggle_utils.core.constants import AXIAL_T2, SAGITTAL_T1
from kaggle_utils.dev.synthetic.anatomy import LABELLED_DISCS, LEFT, RIGHT, Phantom
from kaggle_utils.dev.synthetic.render import T1, T2, render
from kaggle_utils.io.dicom import slice_normal, world_to_pixel

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
    blocks: np.ndarray | None = None  # (N,) slab of each slice (axial: one per disc or stack), -1: a stray image

    def pixel_grid(self, k: int) -> np.ndarray:
        """World coordinates (rows, cols, 3) of the pixel centres of slice k."""
        iop = self.orientations[k]
        along_row = (np.arange(self.cols)[:, None] * self.pixel_spacing[1] * iop[:3]).astype(np.float32)
        along_col = (np.arange(self.rows)[:, None] * self.pixel_spacing[0] * iop[3:]).astype(np.float32)
        return self.positions[k].astype(np.float32) + along_col[:, None, :] + along_row[None, :, :]

    def nearest_slice(self, world: np.ndarray) -> int:
        """Index of the slice (not a stray image) whose plane is closest to a world point."""
        offsets = np.array(
            [abs(float((world - p) @ slice_normal(o))) for p, o in zip(self.positions, self.orientations, strict=True)]
        )
        if self.blocks is not None:
            offsets[self.blocks < 0] = np.inf
        return int(np.argmin(offsets))

    def point_on(self, k: int, world: np.ndarray) -> tuple[int, float, float]:
        """Instance number of slice k and the pixel x, y of a world point projected onto it."""
        x, y = world_to_pixel(self.positions[k], self.orientations[k], self.pixel_spacing, world)
        return int(self.instance_numbers[k]), float(x), float(y)

    def project(self, world: np.ndarray) -> tuple[int, float, float]:
        """Instance number of the slice closest to a world point and the point's pixel x, y on it."""
        return self.point_on(self.nearest_slice(world), world)


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


STRAY_LOCALISER = 0.04  # a coronal or axial localiser stored as the first instance of a sagittal series
_LOCALISER_ORIENTATIONS = (np.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))


def with_stray_localiser(rng: np.random.Generator, plan: SeriesPlan) -> SeriesPlan:
    """``plan`` with a coronal or axial localiser image through its centre stored as instance 1 (the series' own
    slices renumbered after it), as some competition sagittal series hold one; ``blocks`` marks it -1."""
    iop = _LOCALISER_ORIENTATIONS[int(rng.integers(len(_LOCALISER_ORIENTATIONS)))]
    centre = plan.pixel_grid(len(plan.positions) // 2)[plan.rows // 2, plan.cols // 2].astype(np.float64)
    spacing = float(plan.pixel_spacing[0])
    first = np.round(_top_left(centre, iop, spacing, plan.rows, plan.cols), 4)
    n = len(plan.positions)
    blocks = np.zeros(n, dtype=np.int64) if plan.blocks is None else plan.blocks
    plan.positions = np.concatenate([first[None], plan.positions])
    plan.orientations = np.concatenate([iop[None], plan.orientations])
    plan.instance_numbers = np.concatenate([[1], plan.instance_numbers - plan.instance_numbers.min() + 2])
    plan.blocks = np.concatenate([[-1], blocks])
    return plan


# --- axial series -------------------------------------------------------------------------------------------
# How often the competition's training studies have 0-3 Axial T2 series (none lack one there; a few do here, so
# the pipeline's fallback is exercised), how two series share the levels, and how series are numbered and angled.
AXIAL_SERIES_COUNTS = {0: 0.03, 1: 0.81, 2: 0.145, 3: 0.015}
TWO_SERIES_PATTERNS = {"same_levels": 0.42, "disjoint": 0.35, "overlap": 0.23}
UPPER_LEVEL_UNCOVERED = 0.08  # L1/L2 lies above every axial series; in half of those L2/L3 too
PER_DISC_BLOCKS = 0.45  # short stacks each angled along its disc (else one contiguous stack)
PARALLEL_UPPER_SLABS = 0.3  # of those: the upper slabs share one orientation (only the lower ones were angled)
REVERSED_INSTANCES = 0.12  # instance numbers increase upwards (usually they increase caudally)
NUMBERING_GAP = 0.15  # instance numbers skip a few somewhere in the series
LATE_START = 0.3  # instance numbers start above 1
CORONAL_IMAGE = 0.03  # a coronal image stored inside the "Axial T2" series


@dataclass(frozen=True)
class AxialCoverage:
    """The levels one axial series images and, per level, the sides whose subarticular point is labelled on it."""

    levels: tuple[int, ...]  # indices into LABELLED_DISCS, top to bottom
    sides: dict[int, tuple[int, ...]]  # level -> (LEFT, RIGHT) or one of them


def _split_levels(rng: np.random.Generator, levels: list[int], parts: int) -> list[list[int]]:
    cuts = np.sort(rng.choice(np.arange(1, len(levels)), size=parts - 1, replace=False))
    return [list(chunk) for chunk in np.split(np.asarray(levels), cuts)]


def axial_coverage(rng: np.random.Generator, two_passes: bool = False, n: int | None = None) -> list[AxialCoverage]:
    """Draw how many axial series a study has and which (level, side) points each carries.

    As in the competition's data: one series mostly; with two, either both image the same levels and each
    carries one side's points, or they split the levels, or they overlap (an overlapping level's points are on
    one of them: a point is never labelled twice); the upper levels are sometimes imaged by no series.
    ``two_passes`` makes it two series imaging the same levels, one side's points on each; ``n`` fixes the number
    of series.
    """
    drawn = int(rng.choice(list(AXIAL_SERIES_COUNTS), p=list(AXIAL_SERIES_COUNTS.values())))
    n = 2 if two_passes else drawn if n is None else n
    first = 0
    if rng.random() < UPPER_LEVEL_UNCOVERED:
        first = 1 + int(rng.random() < 0.5)
    levels = list(range(first, len(LABELLED_DISCS)))
    both = (LEFT, RIGHT)
    if n == 0:
        return []
    if n == 1:
        return [AxialCoverage(tuple(levels), dict.fromkeys(levels, both))]
    pattern = rng.choice(list(TWO_SERIES_PATTERNS), p=list(TWO_SERIES_PATTERNS.values())) if n == 2 else "disjoint"
    pattern = "same_levels" if two_passes else pattern
    if pattern == "same_levels":
        sides = (LEFT, RIGHT) if rng.random() < 0.5 else (RIGHT, LEFT)
        return [AxialCoverage(tuple(levels), dict.fromkeys(levels, (side,))) for side in sides]
    parts = _split_levels(rng, levels, n)
    if pattern == "overlap":  # the upper series reaches one level into the lower one, which keeps its points
        upper, lower = parts
        return [
            AxialCoverage((*upper, lower[0]), dict.fromkeys(upper, both)),
            AxialCoverage(tuple(lower), dict.fromkeys(lower, both)),
        ]
    return [AxialCoverage(tuple(part), dict.fromkeys(part, both)) for part in parts]


def _axial_orientation(up: np.ndarray, row_hint: np.ndarray) -> np.ndarray:
    """ImageOrientationPatient of a slice with normal ``up``: rows towards patient left, columns posterior."""
    col = np.cross(up, row_hint)
    col /= np.linalg.norm(col)
    row = np.cross(col, up)
    return np.round(np.concatenate([row / np.linalg.norm(row), col]), 6)


def _tilted(rng: np.random.Generator, up: np.ndarray, max_degrees: float) -> np.ndarray:
    """``up`` turned about the left-right axis by a random angle (an operator's imperfect angulation)."""
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    turn = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    out = turn @ up
    return out / np.linalg.norm(out)


def _canal_point(ph: Phantom, disc: int) -> np.ndarray:
    return ph.landmark(disc, ph.posterior_wall(disc) + 5.0, 0.0, 0.0)


def _contiguous_stack(
    rng: np.random.Generator, ph: Phantom, discs: np.ndarray, row_hint: np.ndarray, gap: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Slice centres, orientations and block ids of one stack of parallel slices from above the top disc to
    below the bottom one, angled along the mean of the discs."""
    up = _tilted(rng, ph.disc_up[discs].mean(axis=0), 4.0)
    iop = _axial_orientation(up, row_hint)
    reference = np.mean([_canal_point(ph, d) for d in discs], axis=0)
    heights = (ph.disc_centre[discs] - reference) @ up
    level_gap = float(np.linalg.norm(np.diff(ph.disc_centre[LABELLED_DISCS], axis=0), axis=1).mean())
    margin = rng.uniform(0.35, 0.6) * level_gap  # about half a level above the top disc and below the bottom one
    top, bottom = heights.max() + margin, heights.min() - margin
    n = int(np.clip(round((top - bottom) / gap) + 1, 8, 64))
    centres = [reference + (top - k * gap) * up for k in range(n)]
    return centres, [iop] * n, [0] * n


def _per_disc_blocks(
    rng: np.random.Generator, ph: Phantom, discs: np.ndarray, row_hint: np.ndarray, gap: float, parallel: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Three to five slices through each disc, each slab angled along its own disc, top to bottom; the top
    ``parallel`` slabs share the orientation of the first (one disc apart, one orientation: one block by angle)."""
    centres, orientations, blocks = [], [], []
    shared = _axial_orientation(_tilted(rng, ph.disc_up[discs[: max(parallel, 1)]].mean(axis=0), 3.0), row_hint)
    for block, disc in enumerate(discs):
        up = _tilted(rng, ph.disc_up[disc], 3.0)
        iop = shared if block < parallel else _axial_orientation(up, row_hint)
        k = int(rng.integers(3, 6))
        for height in (np.arange(k)[::-1] - (k - 1) / 2) * gap:
            centres.append(ph.landmark(disc, ph.posterior_wall(disc) + 5.0, float(height), 0.0))
            orientations.append(iop)
            blocks.append(block)
    return centres, orientations, blocks


def _instance_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Numbers of slices listed top to bottom: from 1 or later, sometimes with a jump, sometimes counting up."""
    steps = np.ones(n, dtype=np.int64)
    steps[0] = 1 if rng.random() >= LATE_START else int(rng.integers(2, 41))
    if n > 2 and rng.random() < NUMBERING_GAP:
        steps[int(rng.integers(1, n))] += int(rng.integers(1, 6))
    numbers = np.cumsum(steps)
    return numbers if rng.random() >= REVERSED_INSTANCES else numbers.max() + numbers.min() - numbers


def axial_plan(
    rng: np.random.Generator,
    ph: Phantom,
    series_id: int,
    number: int,
    levels: tuple[int, ...],
    parallel_slabs: bool = False,
) -> SeriesPlan:
    """One Axial T2 series imaging ``levels``: a contiguous stack or per-disc slabs (``blocks`` numbers them;
    -1 marks a coronal image stored in the series, as some real series hold one), sometimes the upper slabs in one
    orientation (``parallel_slabs`` makes it so, with at least two of them)."""
    rows, cols = _AXIAL_MATRICES[rng.integers(len(_AXIAL_MATRICES))]
    fov = rng.uniform(170, 220)
    spacing_px = round(fov / cols, 6)
    twist = np.deg2rad(rng.normal(0, 2.0))  # small patient rotation about the long axis
    row_hint = np.array([np.cos(twist), np.sin(twist), 0.0])
    shift = np.array([rng.uniform(-0.12, 0.12) * fov, rng.uniform(-0.12, 0.12) * fov, 0.0])  # the canal off centre
    discs = LABELLED_DISCS[list(levels)]
    per_disc = rng.random() < PER_DISC_BLOCKS
    parallel = rng.random() < PARALLEL_UPPER_SLABS
    if per_disc or parallel_slabs:
        gap = float(rng.uniform(3.0, 4.0))
        upper = min(len(discs), int(rng.integers(2, max(3, len(discs)))))  # at least one lower slab when 3+
        shared = upper if (parallel or parallel_slabs) and len(discs) > 1 else 0
        centres, orientations, blocks = _per_disc_blocks(rng, ph, discs, row_hint, gap, shared)
    else:
        gap = float(rng.uniform(3.5, 5.0))
        centres, orientations, blocks = _contiguous_stack(rng, ph, discs, row_hint, gap)
    instances = _instance_numbers(rng, len(centres))
    if rng.random() < CORONAL_IMAGE:
        centres.append(np.mean(centres, axis=0))
        orientations.append(np.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
        blocks.append(-1)
        instances = np.append(instances, instances.max() + 1)
    positions = [
        _top_left(c + shift, iop, spacing_px, rows, cols) for c, iop in zip(centres, orientations, strict=True)
    ]
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
        instance_numbers=instances,
        thickness=round(gap * 0.9, 3),
        spacing=round(gap, 3),
        blocks=np.asarray(blocks),
        **_acquisition(rng),
    )


def _pixels(plan: SeriesPlan, ph: Phantom, k: int, rng: np.random.Generator) -> np.ndarray:
    signal = render(ph, plan.pixel_grid(k), plan.weighting)
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * plan.noise
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)  # magnitude images carry Rician noise
    top = 2**plan.bits_stored - 1
    return np.clip(np.rint(magnitude * plan.max_value), 0, top).astype(np.uint16)


TIMINGS_MS = {T1: (600.0, 12.0), T2: (3500.0, 100.0)}
"""(RepetitionTime, EchoTime) in the headers: a T1- and a T2-weighted fast spin echo's."""


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
    ds.RepetitionTime, ds.EchoTime = TIMINGS_MS[plan.weighting]
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
