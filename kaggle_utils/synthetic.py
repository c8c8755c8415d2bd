"""A small synthetic dataset in the exact competition layout, with pathology that is visible where it belongs.

Each study is one analytic 3-D lumbar-spine phantom in DICOM patient coordinates (mm, LPS: +x patient
left, +y posterior, +z superior). Every slice of every series is rendered by sampling the phantom at
that slice's pixel centres, and every keypoint is a 3-D landmark of the phantom projected into the
series' pixel grid, so images, geometry and coordinates agree exactly.

Severities are drawn per study from a latent degeneration factor that grows towards the lower levels
and is shared across conditions, then shape the anatomy: spinal canal stenosis narrows the canal
behind the disc on the middle sagittal slices, foraminal narrowing shrinks that side's foramen on
that side's lateral slices, subarticular stenosis closes that side's lateral recess.

``label_noise`` flips a known fraction of the labelled ``train.csv`` cells to another severity (the images keep
the truth) and lists them in ``label_flips.csv`` beside the competition files (columns ``study_id, row_id,
condition, level, true, given``, severities as ``train.csv`` writes them), so noisy-label detection can be scored.
Without it no such file is written and every file keeps the competition layout either way.

CLI: ``python -m kaggle_utils.synthetic OUT_DIR [--train N] [--test M] [--seed S] [--workers W] [--label-noise F]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from tqdm import tqdm

from kaggle_utils.constants import (
    AXIAL_T2,
    CONDITION_FAMILIES,
    CONDITION_TITLES,
    CONDITIONS,
    EXCLUDED_SERIES,
    EXCLUDED_STUDIES,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    condition_family,
    row_id,
)
from kaggle_utils.dicom import slice_normal, world_to_pixel
from kaggle_utils.paths import (
    COORDS_V7_CSV,
    LABEL_FLIPS_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
    Paths,
)

__all__ = ["make_dataset", "main"]

TRAIN, TEST = SPLITS = ("train", "test")  # the ``{split}_images`` folders
T1, T2 = 0, 1  # index of a tissue's signal in TISSUES
LEFT, RIGHT = 0, 1  # side index of per-side anatomy; patient left is +x

# Relative signal (T1, T2) of each tissue; T2 is a fast spin echo, so fat stays fairly bright.
TISSUES: dict[str, tuple[float, float]] = {
    "fat": (0.95, 0.78),
    "muscle": (0.36, 0.26),
    "viscera": (0.42, 0.48),
    "marrow": (0.70, 0.48),
    "cortex": (0.06, 0.05),
    "annulus": (0.26, 0.20),
    "nucleus": (0.34, 0.95),
    "csf": (0.12, 1.00),
    "nerve": (0.40, 0.34),
    "ligament": (0.15, 0.12),
    "fibrous": (0.22, 0.18),  # tissue that replaces fat or CSF in a narrowed foramen or canal
    "vessel": (0.05, 0.04),
    "interspinous": (0.50, 0.40),
}

# --- the spine: T9 to S5, one row per vertebra (body height, AP depth, lateral half-width in mm) ---------
VERTEBRAE = ("T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1", "S2", "S3", "S4", "S5")
_BODY_HEIGHT = np.array([21, 22, 23, 24, 25, 26, 27, 27, 26, 25, 21, 17, 14, 11], dtype=np.float64)
_BODY_DEPTH = np.array([27, 28, 29, 30, 32, 33, 34, 35, 34, 31, 24, 18, 14, 10], dtype=np.float64)
_BODY_HALF_WIDTH = np.array([17, 18, 19, 20, 21, 22, 23, 24, 25, 45, 40, 32, 24, 16], dtype=np.float64)
_CANAL_DEPTH = np.array([15, 15, 15, 15, 16, 16, 16, 16, 16, 11, 8, 6, 5, 4], dtype=np.float64)
_CANAL_HALF_WIDTH = np.array([8, 8, 8.5, 9, 10, 10, 10.5, 10.5, 11, 12, 10, 8, 6, 5], dtype=np.float64)
# One row per disc (between consecutive vertebrae): height in mm and the downward walk's angle
# towards posterior in degrees (negative = going down moves anterior): this draws the lordosis.
DISC_NAMES = tuple(f"{a}/{b}" for a, b in itertools.pairwise(VERTEBRAE))
_DISC_HEIGHT = np.array([4.5, 5, 5.5, 6.5, 8, 9, 10, 10.5, 9.5, 1.5, 1.2, 1.0, 1.0], dtype=np.float64)
_WALK_ANGLE = np.array([-3, -4, -5, -6, -8, -6, 0, 8, 20, 30, 38, 44, 50], dtype=np.float64)
LABELLED_DISCS = np.array([DISC_NAMES.index(name) for name in LEVEL_NAMES])
_SACRAL_DISCS = np.array([name.startswith("S") for name in DISC_NAMES])
_L3 = VERTEBRAE.index("L3")


def _disc_below(vertebra: str) -> int:
    """Index of the disc under a vertebra (disc i lies between vertebrae i and i + 1)."""
    return VERTEBRAE.index(vertebra)


# --- conditions: which family, which side, which series carries the label point ----------------------------
SPINAL, FORAMINAL, SUBARTICULAR = CONDITION_FAMILIES
FAMILY_ROWS = {f: [i for i, c in enumerate(CONDITIONS) if condition_family(c) == f] for f in CONDITION_FAMILIES}
LABEL_SERIES = {SPINAL: SAGITTAL_T2, FORAMINAL: SAGITTAL_T1, SUBARTICULAR: AXIAL_T2}


def condition_side(condition: str) -> int:
    """LEFT or RIGHT for a bilateral condition: each family lists its left condition first."""
    return FAMILY_ROWS[condition_family(condition)].index(CONDITIONS.index(condition))


# --- severity model -------------------------------------------------------------------------------------
_LEVEL_PROPENSITY = np.array([-1.15, -0.8, -0.35, 0.45, 0.3])  # L4/L5 and L5/S1 degenerate most
_FAMILY_PROPENSITY = {SPINAL: -0.1, FORAMINAL: 0.0, SUBARTICULAR: 0.1}
_SEVERITY_THRESHOLDS = np.array([0.19, 1.09])  # score cut-offs giving ~65 / 22 / 13 %
# Anatomy factor drawn per severity class: (low, high) of a uniform draw; 1 = normal anatomy.
_CANAL_RATIO = ((0.85, 1.0), (0.45, 0.58), (0.15, 0.25))
_FORAMEN_FACTOR = ((0.85, 1.1), (0.52, 0.66), (0.2, 0.3))
_RECESS_FACTOR = ((0.85, 1.05), (0.5, 0.62), (0.18, 0.3))

# --- acquisition -------------------------------------------------------------------------------------------
_SAGITTAL_MATRICES = ((256, 256), (320, 320), (384, 384), (384, 384), (384, 320), (320, 256))
_AXIAL_MATRICES = ((256, 256), (320, 320), (320, 320))
_MISSING_STUDY_FRACTION = 0.25  # studies with a few unlabelled cells; ~2 cells each -> ~2% of all cells
_EDGE_MM = 0.8  # width of the soft edge of every structure


# ==========================================================================================================
# Phantom
# ==========================================================================================================
@dataclass
class Phantom:
    """One study's anatomy. Per-disc arrays are indexed like DISC_NAMES, per-vertebra ones like VERTEBRAE."""

    spine_x: float
    disc_centre: np.ndarray  # (J, 3) mm
    disc_up: np.ndarray  # (J, 3) disc normal, towards superior
    disc_ap: np.ndarray  # (J, 3) in-plane direction towards posterior
    disc_height: np.ndarray  # (J,)
    disc_arc: np.ndarray  # (J,) position along the spine, mm, increasing superiorly
    body_height: np.ndarray  # (J+1,)
    body_depth: np.ndarray  # (J+1,)
    body_half_width: np.ndarray  # (J+1,)
    canal_depth: np.ndarray  # (J,)
    canal_half_width: np.ndarray  # (J,)
    canal_ratio: np.ndarray  # (J,) remaining canal AP depth at the disc, 1 = normal
    foramen: np.ndarray  # (J, 2) foramen size factor [left, right]; 0 = no foramen (sacrum)
    recess: np.ndarray  # (J, 2) lateral recess size factor [left, right]
    degeneration: np.ndarray  # (J,) 0..1: darker, flatter disc
    spinous_length: float
    back_depth: float  # posterior wall to skin, mm
    front_depth: float  # posterior wall to anterior abdominal wall, mm
    fat_depth: float  # subcutaneous fat at the back, mm
    arc_conus: float
    arc_thecal_end: float
    arc_bifurcation: float
    arc_tail: float
    fine_waves: tuple[np.ndarray, np.ndarray]  # texture: wave vectors (K, 3), phases (K,)
    coarse_waves: tuple[np.ndarray, np.ndarray]
    bias_waves: tuple[np.ndarray, np.ndarray]

    def __post_init__(self) -> None:
        # Rendering gathers these per pixel: float32 keeps the whole image in float32.
        for name in _PER_PIXEL_PARAMETERS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))

    def landmark(self, disc: int, u: float, v: float, x: float) -> np.ndarray:
        """World point at AP offset u, height v and lateral offset x (+ = patient left) in a disc's frame."""
        return (
            self.disc_centre[disc]
            + u * self.disc_ap[disc]
            + v * self.disc_up[disc]
            + np.array([x, 0.0, 0.0], dtype=np.float64)
        )

    def posterior_wall(self, disc: int) -> float:
        """AP offset of the posterior disc / body wall in the disc frame."""
        return float(self.disc_depth[disc] / 2)

    @property
    def disc_depth(self) -> np.ndarray:
        return (self.body_depth[:-1] + self.body_depth[1:]) / 2

    # --- landmarks of the labels --------------------------------------------------------------------------
    def canal_centre(self, disc: int) -> np.ndarray:
        return self.landmark(disc, self.posterior_wall(disc) + 1.0 + self.canal_depth[disc] / 2, 0.0, 0.0)

    def foramen_centre(self, disc: int, side: int) -> np.ndarray:
        return self.landmark(disc, self.posterior_wall(disc) + _FORAMEN_U, _FORAMEN_V, _side_sign(side) * _FORAMEN_X)

    def recess_centre(self, disc: int, side: int) -> np.ndarray:
        return self.landmark(disc, self.posterior_wall(disc) + _RECESS_U, 0.0, _side_sign(side) * _RECESS_X)

    def disc_edge(self, disc: int, posterior: bool) -> np.ndarray:
        return self.landmark(disc, (1 if posterior else -1) * self.posterior_wall(disc), 0.0, 0.0)

    def label_point(self, condition: str, disc: int) -> np.ndarray:
        """Where a reader clicks for a condition: canal behind the disc, that foramen, that lateral recess."""
        family = condition_family(condition)
        if family == SPINAL:
            return self.canal_centre(disc)
        if family == FORAMINAL:
            return self.foramen_centre(disc, condition_side(condition))
        return self.recess_centre(disc, condition_side(condition))


_PER_PIXEL_PARAMETERS = (
    "disc_height",
    "disc_arc",
    "body_height",
    "body_depth",
    "body_half_width",
    "canal_depth",
    "canal_half_width",
    "canal_ratio",
    "foramen",
    "recess",
    "degeneration",
)
# Positions of the foramen and lateral recess relative to the posterior wall at a disc (mm).
_FORAMEN_U, _FORAMEN_V, _FORAMEN_X = 5.0, 4.0, 20.0
_FORAMEN_RADII = (5.0, 9.0, 7.0)  # AP, height, lateral half-length
_RECESS_U, _RECESS_X = 3.5, 11.0
_RECESS_RADII = (3.8, 3.2, 9.0)  # lateral, AP, height


def _side_sign(side: int) -> float:
    return 1.0 if side == LEFT else -1.0


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength, size=(n, 1))
    return (directions * k).astype(np.float32), rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)


def _walk_spine(
    heights: np.ndarray, disc_heights: np.ndarray, walk_angles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Body centres and disc centres from the top vertebra down; each step follows that disc's angle."""
    down = np.stack([np.zeros_like(walk_angles), np.sin(walk_angles), -np.cos(walk_angles)], axis=1)
    bodies = [np.zeros(3)]
    discs = []
    for i, step in enumerate(down):
        discs.append(bodies[-1] + step * (heights[i] + disc_heights[i]) / 2)
        bodies.append(discs[-1] + step * (disc_heights[i] + heights[i + 1]) / 2)
    return np.stack(bodies), np.stack(discs)


def _anatomy_factor(rng: np.random.Generator, codes: np.ndarray, table: tuple) -> np.ndarray:
    low = np.array([table[c][0] for c in codes.ravel()])
    high = np.array([table[c][1] for c in codes.ravel()])
    return rng.uniform(low, high).reshape(codes.shape)


def draw_phantom(rng: np.random.Generator, codes: np.ndarray, degeneration: np.ndarray) -> Phantom:
    """Random anatomy of one study whose labelled levels show the severities ``codes`` (conditions x levels)."""
    n_discs = len(DISC_NAMES)
    disc_degeneration = np.zeros(n_discs)
    disc_degeneration[LABELLED_DISCS] = degeneration

    heights = _BODY_HEIGHT * rng.uniform(0.92, 1.12) * rng.normal(1.0, 0.03, len(VERTEBRAE))
    depths = _BODY_DEPTH * rng.uniform(0.97, 1.13) * rng.normal(1.0, 0.02, len(VERTEBRAE))
    disc_heights = _DISC_HEIGHT * rng.uniform(0.97, 1.1) * (1 - 0.3 * disc_degeneration)
    lordosis = np.where(_SACRAL_DISCS, rng.uniform(0.85, 1.1), rng.uniform(0.6, 1.3))
    walk = np.deg2rad(_WALK_ANGLE * lordosis + rng.normal(0, 1.5, n_discs))
    bodies, centres = _walk_spine(heights, disc_heights, walk)

    # Anchor L3 at a random point near the origin; the series are placed around it with their own jitter.
    spine_x = float(rng.normal(0, 2.0))
    anchor = np.array([spine_x, rng.uniform(-10, 10), rng.uniform(-10, 10)])
    centres += anchor - bodies[_L3]

    tilt = walk + np.deg2rad(rng.normal(0, 2.0, n_discs))  # endplates are not exactly square to the walk
    up = np.stack([np.zeros(n_discs), -np.sin(tilt), np.cos(tilt)], axis=1)
    ap = np.stack([np.zeros(n_discs), np.cos(tilt), np.sin(tilt)], axis=1)
    arc = -np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centres, axis=0), axis=1))])

    canal_ratio = np.ones(n_discs)
    foramen = np.where(_SACRAL_DISCS[:, None], 0.0, rng.uniform(0.9, 1.1, (n_discs, 2)))
    recess = np.where(_SACRAL_DISCS[:, None], 0.0, rng.uniform(0.9, 1.05, (n_discs, 2)))
    canal_ratio[LABELLED_DISCS] = _anatomy_factor(rng, codes[FAMILY_ROWS[SPINAL][0]], _CANAL_RATIO)
    foramen[LABELLED_DISCS] = _anatomy_factor(rng, codes[FAMILY_ROWS[FORAMINAL]], _FORAMEN_FACTOR).T
    recess[LABELLED_DISCS] = _anatomy_factor(rng, codes[FAMILY_ROWS[SUBARTICULAR]], _RECESS_FACTOR).T

    canal_scale = rng.uniform(0.92, 1.1)
    return Phantom(
        spine_x=spine_x,
        disc_centre=centres,
        disc_up=up,
        disc_ap=ap,
        disc_height=disc_heights,
        disc_arc=arc,
        body_height=heights,
        body_depth=depths,
        body_half_width=_BODY_HALF_WIDTH * rng.uniform(0.95, 1.08),
        canal_depth=(_CANAL_DEPTH[:-1] + _CANAL_DEPTH[1:]) / 2 * canal_scale,
        canal_half_width=(_CANAL_HALF_WIDTH[:-1] + _CANAL_HALF_WIDTH[1:]) / 2 * rng.uniform(0.95, 1.08),
        canal_ratio=canal_ratio,
        foramen=foramen,
        recess=recess,
        degeneration=disc_degeneration,
        spinous_length=float(rng.uniform(28, 38)),
        back_depth=float(rng.uniform(70, 95)),
        front_depth=float(rng.uniform(190, 240)),
        fat_depth=float(rng.uniform(8, 28)),
        # The cord ends around T12/L1, so the labelled levels show cauda equina only.
        arc_conus=float(arc[_disc_below("T12")] + rng.uniform(-8.0, 10.0)),
        arc_thecal_end=float(arc[_disc_below("S1")] - heights[VERTEBRAE.index("S2")] / 2),  # mid S2
        arc_bifurcation=float(arc[_disc_below("L4")] + heights[VERTEBRAE.index("L4")] / 2),  # mid L4
        arc_tail=float(arc[-1] - disc_heights[-1] / 2 - heights[-1]),
        fine_waves=_waves(rng, 6, (4.0, 9.0)),
        coarse_waves=_waves(rng, 6, (18.0, 45.0)),
        bias_waves=_waves(rng, 2, (250.0, 450.0)),
    )


# ==========================================================================================================
# Rendering
# ==========================================================================================================
def _inside(sdf: np.ndarray, edge: float = _EDGE_MM) -> np.ndarray:
    """Soft membership from an (approximate) signed distance in mm, negative inside."""
    return np.clip(0.5 - sdf / edge, 0.0, 1.0)


def _ellipse_sdf(*terms: tuple[np.ndarray, np.ndarray | float]) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse / ellipsoid from (offset, radius) pairs."""
    squared = functools.reduce(np.add, [(offset / radius) ** 2 for offset, radius in terms])
    smallest = functools.reduce(np.minimum, [radius for _, radius in terms])
    return (np.sqrt(squared) - 1.0) * smallest


def _band_sdf(value: np.ndarray, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """Signed distance to the slab low <= value <= high."""
    return np.maximum(low - value, value - high)


def _intersect(*sdfs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.maximum, sdfs)


def _capsule_sdf(a: np.ndarray, b: np.ndarray, start: tuple, end: tuple, radius: float) -> np.ndarray:
    """Signed distance to a thick segment from ``start`` to ``end`` in the (a, b) plane."""
    da, db = end[0] - start[0], end[1] - start[1]
    t = np.clip(((a - start[0]) * da + (b - start[1]) * db) / (da * da + db * db), 0.0, 1.0)
    return np.hypot(a - start[0] - t * da, b - start[1] - t * db) - radius


def _dot(points: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(..., 3) x (K, 3) -> (..., K) without BLAS, whose idle threads would compete with the worker processes."""
    return points[..., :1] * vectors[:, 0] + points[..., 1:2] * vectors[:, 1] + points[..., 2:3] * vectors[:, 2]


def _smooth_field(grid: np.ndarray, waves: tuple[np.ndarray, np.ndarray], stride: int) -> np.ndarray:
    """Sum of plane waves, evaluated every ``stride`` pixels and interpolated (it is smooth at that scale)."""
    vectors, phases = waves
    coarse = np.sin(_dot(grid[::stride, ::stride], vectors) + phases).mean(axis=-1)
    rows, cols = grid.shape[:2]
    return cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_LINEAR).ravel()


@dataclass
class _Frame:
    """Per-pixel coordinates in the frame of the nearest disc, plus the indices that gather its parameters."""

    x: np.ndarray  # lateral, + = patient left
    u: np.ndarray  # AP from the disc centre, + = posterior
    v: np.ndarray  # height from the disc centre, + = superior
    arc: np.ndarray  # position along the spine
    disc: np.ndarray  # index of the nearest disc
    side: np.ndarray  # LEFT or RIGHT
    wall: np.ndarray  # AP offset of the posterior wall
    vertebra: np.ndarray  # index of the vertebra the pixel lies in
    vertebra_v: np.ndarray  # height from that vertebra's centre

    def take(self, index: np.ndarray) -> _Frame:
        return _Frame(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def _coarse_spine(ph: Phantom, grid: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest disc and "spine structures may reach here", found every ``stride`` pixels and repeated."""
    coarse = grid[::stride, ::stride]
    up = ph.disc_up.astype(np.float32)
    centre = ph.disc_centre.astype(np.float32)
    disc = np.abs(_dot(coarse, up) - np.einsum("jk,jk->j", centre, up)).argmin(axis=-1)
    rel = coarse - centre[disc]
    u = rel[..., 1] * ph.disc_ap[disc, 1] + rel[..., 2] * ph.disc_ap[disc, 2]
    wall = ph.disc_depth[disc] / 2
    near = (
        (np.abs(coarse[..., 0] - ph.spine_x) < _SPINE_REACH_X)
        & (u > -wall - _SPINE_REACH_FRONT)
        & (u < wall + _SPINE_REACH_BACK)
    )
    near = cv2.dilate(near.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # blocks are coarse
    rows, cols = grid.shape[:2]

    def full(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, stride, axis=0), stride, axis=1)[:rows, :cols].ravel()

    return full(disc), full(near)


def _spine_frame(ph: Phantom, points: np.ndarray, nearest: np.ndarray) -> _Frame:
    """Coordinates that follow the spine, blended linearly between the two disc planes around each point.

    Between discs the height is the fraction of the way from the lower plane to the upper one, in mm of
    the disc-to-disc distance, and the AP axis turns with it. Unlike the frame of the nearest disc alone
    this has no seam half way between discs, where posterior elements far behind the axis would break.
    ``nearest`` (approximately the closest disc) only needs to be right up to a neighbour.
    """
    n_discs = len(DISC_NAMES)
    # The spine has no lateral tilt, so only y and z of the disc frames matter.
    (cy, cz), (upy, upz), (apy, apz) = (a[:, 1:].T.astype(np.float32) for a in (ph.disc_centre, ph.disc_up, ph.disc_ap))
    offset = cy * upy + cz * upz
    y, z = points[:, 1], points[:, 2]

    def height(disc: np.ndarray) -> np.ndarray:  # signed distance to a disc plane, + = superior
        return y * upy[disc] + z * upz[disc] - offset[disc]

    upper = np.clip(np.where(height(nearest) > 0, nearest - 1, nearest), 0, n_discs - 2)
    lower = upper + 1
    below_upper, above_lower = height(upper), height(lower)
    span = np.maximum(above_lower - below_upper, 1e-3)
    f = np.clip(above_lower / span, -3.0, 4.0)  # 0 on the lower plane, 1 on the upper one

    def blend(values: np.ndarray) -> np.ndarray:
        return values[lower] + f * (values[upper] - values[lower])

    axis_y, axis_z = blend(apy), blend(apz)
    u = ((y - blend(cy)) * axis_y + (z - blend(cz)) * axis_z) / np.sqrt(axis_y**2 + axis_z**2)

    to_upper = f >= 0.5
    disc = np.where(to_upper, upper, lower)
    v = np.where(to_upper, f - 1.0, f) * span
    above = v > 0
    vertebra = disc + (~above)
    half = ph.disc_height[disc] / 2 + ph.body_height[vertebra] / 2
    x = points[:, 0] - np.float32(ph.spine_x)
    return _Frame(
        x=x,
        u=u,
        v=v,
        arc=blend(ph.disc_arc),
        disc=disc,
        side=(x < 0).astype(np.intp),
        wall=blend(ph.disc_depth / 2),
        vertebra=vertebra,
        vertebra_v=np.where(above, v - half, v + half),
    )


class _Canvas:
    """Painter's algorithm over soft masks: later structures cover earlier ones."""

    def __init__(self, image: np.ndarray, weighting: int) -> None:
        self.image = image
        self.weighting = weighting

    def tone(self, tissue: str) -> float:
        return TISSUES[tissue][self.weighting]

    def paint(self, mask: np.ndarray, value: np.ndarray | float | str) -> None:
        if isinstance(value, str):
            value = self.tone(value)
        self.image += mask * (value - self.image)


def _wall_curve(ph: Phantom) -> tuple[np.ndarray, np.ndarray]:
    """(y, z) of the posterior wall at each disc, sorted by z, that the body outline follows.

    The skin of the buttocks follows the sacrum's backward sweep only halfway.
    """
    walls = ph.disc_centre + (ph.disc_depth / 2)[:, None] * ph.disc_ap
    last_lumbar = walls[~_SACRAL_DISCS][-1]
    walls[_SACRAL_DISCS, 1] = last_lumbar[1] + 0.5 * (walls[_SACRAL_DISCS, 1] - last_lumbar[1])
    order = np.argsort(walls[:, 2])
    return walls[order, 1], walls[order, 2]


def _paint_body_wall(canvas: _Canvas, ph: Phantom, points: np.ndarray, x: np.ndarray, texture: tuple) -> None:
    """Abdomen, back muscles, subcutaneous fat and skin, all following the spine's posterior wall."""
    fine, coarse = texture
    wall_y, wall_z = _wall_curve(ph)
    y = points[:, 1]
    ref = np.interp(points[:, 2], wall_z, wall_y).astype(np.float32)
    back = ref + ph.back_depth - x**2 / 420.0 - 4.0 * np.exp(-((x / 14.0) ** 2))  # midline furrow
    front = ref - ph.front_depth + x**2 / 900.0
    inside = _inside(_band_sdf(y, front, back), 1.5)
    canvas.paint(inside, canvas.tone("viscera") * np.clip(1.0 + 0.45 * coarse + 0.1 * fine, 0.3, 1.6))
    # Back muscles: an elliptical mass between the spine and the subcutaneous fat (rounded in axial view).
    muscle_front, muscle_back = ref - 8.0, back - ph.fat_depth
    half = (muscle_back - muscle_front) / 2
    paraspinal = _ellipse_sdf((x, 80.0), (y - muscle_front - half, half * 1.15))
    paraspinal = _intersect(paraspinal, _band_sdf(y, muscle_front, muscle_back))
    # Retroperitoneal and intermuscular fat around the back muscles, curving forward beside the spine.
    canvas.paint(inside * _inside(_ellipse_sdf((x, 140.0), (y - back, back - ref + 20.0)), 4.0), "fat")
    canvas.paint(inside * _inside(paraspinal, 3.0), canvas.tone("muscle") * (1 + 0.12 * fine))
    canvas.paint(inside * _inside(_band_sdf(y, back - ph.fat_depth, back), 2.0), canvas.tone("fat") * (1 + 0.04 * fine))
    canvas.paint(inside * _inside(_band_sdf(y, front, front + 15.0), 2.0), "fat")


def _paint_front(canvas: _Canvas, ph: Phantom, f: _Frame) -> None:
    """Psoas muscles, aorta and vena cava in front of and beside the vertebral bodies."""
    top = ph.disc_arc[_disc_below("T12")]
    lumbar = _inside(_band_sdf(f.arc, ph.arc_bifurcation - 90, top), 10.0)
    grow = np.clip((top - f.arc) / 110.0, 0.3, 1.0)
    lateral = np.minimum(ph.body_half_width[f.vertebra], 26.0) + 9.0 * grow
    for sign in (1.0, -1.0):
        psoas = _ellipse_sdf((f.x - sign * lateral, 11.0 * grow), (f.u + 3.0, 14.0 * grow))
        canvas.paint(lumbar * _inside(psoas, 1.5), "muscle")
    below = np.clip((ph.arc_bifurcation - f.arc) * 0.45, 0.0, 25.0)  # iliac vessels part below L4
    front = -ph.body_depth[f.vertebra] / 2 - 4.0  # front of the rounded body outline
    for x0, radius, spread in ((11.0, 10.0, 1.0), (-13.0, 11.0, -1.0)):
        size = np.where(below > 0, radius * 0.65, radius)
        vessel = _ellipse_sdf((f.x - x0 - spread * below, size), (f.u - (front - size - 2), size))
        canvas.paint(_inside(vessel, 1.0), "vessel")


def _paint_posterior_elements(canvas: _Canvas, ph: Phantom, f: _Frame, fine: np.ndarray) -> None:
    """Interspinous tissue, facet pillars, laminae with ligamentum flavum, spinous processes."""
    side_x = np.abs(f.x)
    behind = f.u - f.wall  # AP distance behind the posterior wall
    depth = ph.canal_depth[f.disc]
    canal_half_width = ph.canal_half_width[f.disc]
    half_height = ph.body_height[f.vertebra] / 2
    bone = canvas.tone("marrow") * 0.85 * (1 + 0.08 * fine)
    lumbar = ~_SACRAL_DISCS[f.disc]
    length = np.where(lumbar, ph.spinous_length, 10.0)

    midline = _ellipse_sdf((f.x, 3.5), (behind - depth - length / 2, length / 2 + 5))
    canvas.paint(_inside(midline, 1.5), "interspinous")
    # Articular pillars behind the foramina; a thin joint line crosses them at each disc.
    pillar = _ellipse_sdf((side_x - canal_half_width - 9.0, 8.5), (behind - depth - 3.0, 9.0))
    canvas.paint(_inside(pillar, 1.0), "cortex")
    canvas.paint(_inside(pillar + 1.2, 1.0), bone)
    joint = np.abs(f.v - 0.3 * (behind - depth - 3.0)) - 0.7
    canvas.paint(_inside(joint, 0.6) * _inside(pillar + 1.0, 1.0) * lumbar, "ligament")
    # Laminae meet behind the canal in a V; between them at disc level only ligamentum flavum remains.
    lamina = _capsule_sdf(side_x, behind, (canal_half_width + 4.0, depth - 1.0), (0.0, depth + 6.0), 2.6)
    canvas.paint(_inside(lamina, 1.0), "ligament")
    at_vertebra = np.abs(f.vertebra_v + 3.0) - half_height * 0.7
    canvas.paint(_inside(np.maximum(lamina, at_vertebra), 1.5), bone)
    # Spinous process: slopes down and back from the laminae.
    along = behind - depth - 4.0
    spinous_v = f.vertebra_v + half_height * 0.15 + 0.3 * np.clip(along, 0, None)
    spinous = _intersect(np.abs(f.x) - 3.0, _band_sdf(along, 0.0, length), np.abs(spinous_v) - half_height * 0.6)
    canvas.paint(_inside(spinous, 1.0), "cortex")
    canvas.paint(_inside(spinous + 1.0, 1.0), bone)


def _paint_foramina(canvas: _Canvas, ph: Phantom, f: _Frame, fine: np.ndarray) -> None:
    """Fibrous frame, foraminal fat with its exiting root (shrunk by that side's narrowing), pedicles."""
    side_x = np.abs(f.x)
    behind = f.u - f.wall
    lumbar = ~_SACRAL_DISCS[f.disc]
    zone = _intersect(_band_sdf(side_x, 11.0, 28.0), _band_sdf(behind, 0.0, 12.0))
    canvas.paint(_inside(zone, 1.2) * lumbar, "fibrous")

    factor = ph.foramen[f.disc, f.side]
    ru, rv, rx = _FORAMEN_RADII
    du, dv, dx = behind - _FORAMEN_U, f.v - _FORAMEN_V, side_x - _FORAMEN_X
    radius_u, radius_v = np.maximum(ru * factor, 0.05), np.maximum(rv * factor, 0.05)
    fat = _inside(_ellipse_sdf((du, radius_u), (dv, radius_v), (dx, rx))) * (factor > 0)
    canvas.paint(fat, "fat")
    root = _ellipse_sdf((du - 0.5, 2.0), (dv - 3.5 * np.minimum(factor, 1.0), 2.0))
    canvas.paint(_inside(root, 0.8) * fat, "nerve")

    half_height = ph.body_height[f.vertebra] / 2
    pedicle = _intersect(
        _band_sdf(side_x, ph.canal_half_width[f.disc] + 0.5, 24.0),
        _ellipse_sdf((behind - 5.0, 8.0), (f.vertebra_v - half_height * 0.3, half_height * 0.55)),
    )
    canvas.paint(_inside(pedicle, 1.0), "cortex")
    canvas.paint(_inside(pedicle + 1.2, 1.0), canvas.tone("marrow") * (1 + 0.08 * fine))


def _paint_vertebrae(canvas: _Canvas, ph: Phantom, f: _Frame, fine: np.ndarray) -> None:
    """Vertebral bodies (cortex and marrow) and discs (annulus and nucleus)."""
    half_depth = ph.body_depth[f.vertebra] / 2
    half_width = ph.body_half_width[f.vertebra]
    # Round in front, flat at the back: a larger ellipse cut by the posterior wall.
    outline = np.maximum(_ellipse_sdf((f.u + 2.0, half_depth + 2.0), (f.x, half_width)), f.u - half_depth)
    disc_half = ph.disc_height[f.disc] / 2 * (1.0 + 0.25 * np.clip(1 - (f.u / half_depth) ** 2, 0, 1))
    body_end = ph.disc_height[f.disc] / 2 + ph.body_height[f.vertebra]
    body = _intersect(outline, disc_half - np.abs(f.v), np.abs(f.v) - body_end)
    canvas.paint(_inside(body, 0.6), "cortex")
    canvas.paint(_inside(body + 1.0, 0.8), canvas.tone("marrow") * (1 + 0.1 * fine))

    disc_outline = np.maximum(_ellipse_sdf((f.u + 2.0, f.wall + 2.5), (f.x, half_width + 0.5)), f.u - f.wall - 0.6)
    canvas.paint(_inside(np.maximum(disc_outline, np.abs(f.v) - disc_half)), "annulus")
    annulus, nucleus = canvas.tone("annulus"), canvas.tone("nucleus")
    nucleus_tone = annulus + (nucleus - annulus) * (1 - 0.8 * ph.degeneration[f.disc])
    core = _ellipse_sdf((f.u + 1.0, f.wall * 0.62), (f.x, half_width * 0.6), (f.v, disc_half * 0.62))
    canvas.paint(_inside(core, 2.5) * ~_SACRAL_DISCS[f.disc], nucleus_tone)


def _paint_canal(canvas: _Canvas, ph: Phantom, f: _Frame) -> None:
    """Thecal sac with CSF, cord above the conus and cauda equina below, narrowed at stenotic discs."""
    depth = ph.canal_depth[f.disc]
    half_width = ph.canal_half_width[f.disc]
    front = f.wall + 1.0
    at_disc = np.exp(-((f.v / 5.5) ** 2))
    narrowing = (1 - ph.canal_ratio[f.disc]) * at_disc * depth
    recess_factor = ph.recess[f.disc, f.side]
    side_width = half_width * (1 - 0.3 * (1 - recess_factor) * at_disc)

    # Normal extent (dark: ligaments, bulging disc, facet overgrowth), then what is left of it (CSF).
    full = _ellipse_sdf((f.u - front - depth / 2, depth / 2), (f.x, half_width))
    rx, ru, rv = _RECESS_RADII
    du, dx = f.u - f.wall - _RECESS_U, np.abs(f.x) - _RECESS_X
    canvas.paint(_inside(np.minimum(full, _ellipse_sdf((dx, rx), (du, ru), (f.v, rv)))), "ligament")

    open_front = front + 0.6 * narrowing
    open_back = front + depth - 0.4 * narrowing
    open_half = np.maximum((open_back - open_front) / 2, 0.05)
    centre_u = (open_front + open_back) / 2
    canal = _ellipse_sdf((f.u - centre_u, open_half), (f.x, side_width))
    shrunk = np.maximum(recess_factor, 0.02)
    recess = _ellipse_sdf((dx, rx * shrunk), (du, ru * shrunk), (f.v, rv))
    lumen = _inside(np.minimum(canal, recess))
    # Below the thecal sac the sacral canal holds fat; a tight canal keeps crowded roots and little CSF.
    clarity = np.clip((1 - (1 - ph.canal_ratio[f.disc]) * at_disc - 0.15) / 0.6, 0.0, 1.0)
    fluid = canvas.tone("nerve") + (canvas.tone("csf") - canvas.tone("nerve")) * clarity
    sac = _inside(ph.arc_thecal_end - f.arc, 6.0)
    canvas.paint(lumen, fluid * sac + canvas.tone("fat") * (1 - sac))

    cord = _ellipse_sdf((f.x, 4.5), (f.u - centre_u, np.minimum(3.8, open_half)))
    conus = np.clip((f.arc - ph.arc_conus) / 12.0, 0.0, 1.0)
    canvas.paint(lumen * _inside(cord, 1.0) * conus, "nerve")
    # Roots of the cauda equina settle posteriorly (supine patient): a striped band in the back half.
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * f.x / 3.2)
    dependent = np.clip((f.u - centre_u) / open_half + 0.2, 0.0, 1.0)
    canvas.paint(lumen * (1 - conus) * sac * 0.55 * stripes * dependent, "nerve")


# Spine structures reach at most this far from the disc frame origin; pixels outside skip them.
_SPINE_REACH_X, _SPINE_REACH_FRONT, _SPINE_REACH_BACK = 55.0, 40.0, 70.0


def render(ph: Phantom, grid: np.ndarray, weighting: int) -> np.ndarray:
    """Noise-free relative signal (about 0..1) of the phantom on a (rows, cols, 3) grid of world points."""
    grid = np.asarray(grid, dtype=np.float32)
    points = grid.reshape(-1, 3)
    texture = (_smooth_field(grid, ph.fine_waves, 2), _smooth_field(grid, ph.coarse_waves, 8))
    canvas = _Canvas(np.zeros(len(points), dtype=np.float32), weighting)
    _paint_body_wall(canvas, ph, points, points[:, 0] - np.float32(ph.spine_x), texture)

    nearest, may_reach = _coarse_spine(ph, grid, stride=4)
    near = np.flatnonzero(may_reach)
    spine = _spine_frame(ph, points[near], nearest[near])
    above_tail = np.flatnonzero(spine.arc > ph.arc_tail)  # the chain ends at the tip of the sacrum
    near, spine = near[above_tail], spine.take(above_tail)
    fine = texture[0][near]
    local = _Canvas(canvas.image[near], weighting)
    _paint_front(local, ph, spine)
    _paint_posterior_elements(local, ph, spine, fine)
    _paint_foramina(local, ph, spine, fine)
    _paint_vertebrae(local, ph, spine, fine)
    _paint_canal(local, ph, spine)
    canvas.image[near] = local.image
    return (canvas.image * _bias_field(ph, grid)).reshape(grid.shape[:2])


def _bias_field(ph: Phantom, grid: np.ndarray) -> np.ndarray:
    """Receive-coil falloff away from the back times a gentle low-frequency wobble."""
    wall_y, wall_z = _wall_curve(ph)
    stride = 8
    coarse = grid[::stride, ::stride].reshape(-1, 3)
    back = np.interp(coarse[:, 2], wall_z, wall_y) + ph.back_depth
    coil = 0.45 + 0.55 * np.exp(-np.clip(back - coarse[:, 1], 0, None) / 130.0)
    field = coil.reshape(grid[::stride, ::stride].shape[:2]).astype(np.float32)
    rows, cols = grid.shape[:2]
    field = cv2.resize(field, (cols, rows), interpolation=cv2.INTER_LINEAR).ravel()
    return field * (1.0 + 0.2 * _smooth_field(grid, ph.bias_waves, stride))


# ==========================================================================================================
# Series geometry and DICOM writing
# ==========================================================================================================
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


# ==========================================================================================================
# Labels and tables
# ==========================================================================================================
def draw_severities(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Severity class per (condition, level) and per-level disc degeneration 0..1 from shared latents.

    One study factor and one factor per level feed every condition, and one factor per (side, level)
    feeds both foraminal and subarticular of that side, so the labels correlate like real ones do.
    """
    study = rng.normal()
    level = _LEVEL_PROPENSITY + 0.5 * rng.normal(size=len(LEVELS))
    side = 0.35 * rng.normal(size=(2, len(LEVELS)))
    score = 0.75 * study + level[None, :] + 0.45 * rng.normal(size=(len(CONDITIONS), len(LEVELS)))
    for c, condition in enumerate(CONDITIONS):
        family = condition_family(condition)
        score[c] += _FAMILY_PROPENSITY[family] + (0.0 if family == SPINAL else side[condition_side(condition)])
    degeneration = 1 / (1 + np.exp(-(0.75 * study + level) * 1.5))
    return np.digitize(score, _SEVERITY_THRESHOLDS), degeneration


def _label_row(study_id: int, codes: np.ndarray, missing: np.ndarray) -> dict:
    # codes and missing are (condition, level) arrays: raveled they follow LABEL_COLUMNS (condition-major).
    cells = zip(LABEL_COLUMNS, codes.ravel(), missing.ravel(), strict=True)
    return {"study_id": study_id, **{column: None if gap else SEVERITIES[code] for column, code, gap in cells}}


def _missing_cells(rng: np.random.Generator) -> np.ndarray:
    missing = np.zeros((len(CONDITIONS), len(LEVELS)), dtype=bool)
    if rng.random() < _MISSING_STUDY_FRACTION:
        cells = rng.choice(missing.size, size=int(rng.integers(1, 4)), replace=False)
        missing.flat[cells] = True
    return missing


def flip_labels(labels: pd.DataFrame, fraction: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``labels`` (``study_id`` + label columns of severity names) with ``round(fraction * labelled cells)`` cells,
    drawn without replacement, changed to one of the two other severities; and the table of those flips
    (``study_id, row_id, condition, level, true, given``) in row-id order. Missing cells are never touched."""
    values = labels[list(LABEL_COLUMNS)].to_numpy(dtype=object)
    labelled = np.flatnonzero(pd.notna(values).ravel())
    chosen = np.sort(rng.choice(labelled, size=int(round(fraction * len(labelled))), replace=False))
    flips = []
    for cell in chosen:
        r, c = divmod(int(cell), len(LABEL_COLUMNS))
        true = values[r, c]
        given = SEVERITIES[(SEVERITIES.index(true) + int(rng.integers(1, len(SEVERITIES)))) % len(SEVERITIES)]
        values[r, c] = given
        condition, level = CONDITIONS[c // len(LEVELS)], LEVELS[c % len(LEVELS)]  # LABEL_COLUMNS is condition-major
        study_id = int(labels["study_id"].iloc[r])
        flips.append((study_id, row_id(study_id, LABEL_COLUMNS[c]), condition, level, true, given))
    noisy = labels.copy()
    noisy[list(LABEL_COLUMNS)] = values
    table = pd.DataFrame(flips, columns=["study_id", "row_id", "condition", "level", "true", "given"])
    return noisy, table.sort_values("row_id", ignore_index=True)


@dataclass
class StudyTask:
    """Everything a worker needs to write one study; the seed sequence makes it order-independent."""

    out_dir: Path
    split: str
    study_id: int
    series_ids: dict[str, int]  # description -> series id, only the series to write
    seed: int
    seed_sequence: np.random.SeedSequence


@dataclass
class StudyRecord:
    """Rows one study contributes to the CSV files."""

    label: dict
    series: list[dict] = field(default_factory=list)
    coordinates: list[dict] = field(default_factory=list)
    corrected: list[dict] = field(default_factory=list)


def _label_coordinates(study_id: int, ph: Phantom, plans: dict[str, SeriesPlan], missing: np.ndarray) -> list[dict]:
    """Competition-style points: spinal on the T2, foraminal on the T1, subarticular on the axial."""
    rows = []
    for c, condition in enumerate(CONDITIONS):
        for lv, disc in enumerate(LABELLED_DISCS):
            if missing[c, lv]:
                continue
            plan = plans[LABEL_SERIES[condition_family(condition)]]
            instance, x, y = plan.project(ph.label_point(condition, disc))
            rows.append(
                {
                    "study_id": study_id,
                    "series_id": plan.series_id,
                    "instance_number": instance,
                    "condition": CONDITION_TITLES[condition],
                    "level": LEVEL_NAMES[lv],
                    "x": round(x, 4),
                    "y": round(y, 4),
                }
            )
    return rows


def _corrected_coordinates(study_id: int, ph: Phantom, plans: dict[str, SeriesPlan]) -> list[dict]:
    """Two points per level per sagittal series: T1 left/right foramen, T2 front/back of the disc."""
    rows = []
    for description in (SAGITTAL_T1, SAGITTAL_T2):
        plan = plans[description]
        for lv, disc in enumerate(LABELLED_DISCS):
            if description == SAGITTAL_T1:
                points = {"L": ph.foramen_centre(disc, LEFT), "R": ph.foramen_centre(disc, RIGHT)}
            else:
                points = {"L": ph.disc_edge(disc, posterior=False), "R": ph.disc_edge(disc, posterior=True)}
            for side, world in points.items():
                _, x, y = plan.project(world)
                rows.append(
                    {
                        "study_id": study_id,
                        "series_id": plan.series_id,
                        "level": LEVEL_NAMES[lv],
                        "side": side,
                        "relative_x": round(x / plan.cols, 6),
                        "relative_y": round(y / plan.rows, 6),
                    }
                )
    return rows


def make_study(task: StudyTask) -> StudyRecord:
    """Draw, render and write one study; return its CSV rows."""
    label_rng, anatomy_rng, plan_rng, noise_rng = (np.random.default_rng(s) for s in task.seed_sequence.spawn(4))
    codes, degeneration = draw_severities(label_rng)
    missing = _missing_cells(label_rng)
    ph = draw_phantom(anatomy_rng, codes, degeneration)
    all_ids = task.series_ids
    plans = {
        SAGITTAL_T1: sagittal_plan(plan_rng, ph, all_ids.get(SAGITTAL_T1, 0), SAGITTAL_T1, 1),
        SAGITTAL_T2: sagittal_plan(plan_rng, ph, all_ids.get(SAGITTAL_T2, 0), SAGITTAL_T2, 2),
        AXIAL_T2: axial_plan(plan_rng, ph, all_ids.get(AXIAL_T2, 0), 3),
    }
    record = StudyRecord(label=_label_row(task.study_id, codes, missing))
    for description in SERIES_DESCRIPTIONS:
        if description not in all_ids:
            continue
        plan = plans[description]
        folder = Paths(task.out_dir, task.out_dir).series_dir(task.split, task.study_id, plan.series_id)
        write_series(folder, plan, ph, task.study_id, task.seed, noise_rng)
        record.series.append(
            {"study_id": task.study_id, "series_id": plan.series_id, "series_description": description}
        )
    if task.split == TRAIN:
        record.coordinates = _label_coordinates(task.study_id, ph, plans, missing)
        record.corrected = _corrected_coordinates(task.study_id, ph, plans)
    return record


# ==========================================================================================================
# Dataset
# ==========================================================================================================
_OUTPUT_FILES = (
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    COORDS_V7_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
    LABEL_FLIPS_CSV,
)


def _distinct_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct 7-10 digit ids that are not on the exclusion lists."""
    taken = set(EXCLUDED_SERIES) | set(EXCLUDED_STUDIES)
    ids: list[int] = []
    while len(ids) < n:
        candidate = int(rng.integers(10**6, 10**10))
        if candidate not in taken:
            taken.add(candidate)
            ids.append(candidate)
    return ids


def _tasks(out_dir: Path, n_train: int, n_test: int, seed: int, missing_series_fraction: float) -> list[StudyTask]:
    # Study i always gets ids[4i : 4i + 4] and the i-th spawned seed, so a smaller dataset with the
    # same seed starts with exactly the same studies, byte for byte.
    n = n_train + n_test
    ids = _distinct_ids(np.random.default_rng(seed), 4 * n)
    sequences = np.random.SeedSequence(seed).spawn(n)
    drop_rng = np.random.default_rng([seed, 1])
    tasks = []
    for i in range(n):
        split = TRAIN if i < n_train else TEST
        series = dict(zip(SERIES_DESCRIPTIONS, ids[4 * i + 1 : 4 * i + 4], strict=True))
        if split == TEST and drop_rng.random() < missing_series_fraction:
            del series[(SAGITTAL_T1, SAGITTAL_T2)[int(drop_rng.integers(2))]]
        tasks.append(StudyTask(out_dir, split, ids[4 * i], series, seed, sequences[i]))
    return tasks


def _clear_previous(out_dir: Path) -> None:
    """Remove what an earlier run wrote here (and only that), so stale studies cannot linger."""
    for split in SPLITS:
        shutil.rmtree(Paths(out_dir, out_dir).images_dir(split), ignore_errors=True)
    for name in _OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _run(tasks: list[StudyTask], workers: int, progress: bool) -> list[StudyRecord]:
    def bar(records: Iterable) -> Iterable:
        return tqdm(records, total=len(tasks), desc="synthetic studies", disable=not progress)

    if workers <= 1 or len(tasks) <= 1:
        return [make_study(t) for t in bar(tasks)]
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        return list(bar(pool.map(make_study, tasks)))  # map keeps task order: output does not depend on timing


def _write_tables(
    out_dir: Path, tasks: list[StudyTask], records: list[StudyRecord], label_noise: float, seed: int
) -> None:
    train = [r for t, r in zip(tasks, records, strict=True) if t.split == TRAIN]
    test = [r for t, r in zip(tasks, records, strict=True) if t.split == TEST]
    label_columns = ["study_id", *LABEL_COLUMNS]
    series_columns = ["study_id", "series_id", "series_description"]
    coordinate_columns = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    corrected_columns = ["study_id", "series_id", "level", "side", "relative_x", "relative_y"]

    def table(rows: list[dict], columns: list[str], name: str) -> None:
        pd.DataFrame(rows, columns=columns).to_csv(out_dir / name, index=False)

    labels = pd.DataFrame([r.label for r in train], columns=label_columns)
    if label_noise > 0:
        labels, flips = flip_labels(labels, label_noise, np.random.default_rng([seed, 2]))
        flips.to_csv(out_dir / LABEL_FLIPS_CSV, index=False)
    labels.to_csv(out_dir / TRAIN_CSV, index=False)
    table([r.label for r in test], label_columns, TEST_LABELS_CSV)
    table([s for r in train for s in r.series], series_columns, TRAIN_SERIES_CSV)
    table([s for r in test for s in r.series], series_columns, TEST_SERIES_CSV)
    table([c for r in train for c in r.coordinates], coordinate_columns, TRAIN_COORDINATES_CSV)
    table([c for r in train for c in r.corrected], corrected_columns, COORDS_V7_CSV)
    submission = [
        {"row_id": row_id(r.label["study_id"], column), **dict.fromkeys(SEVERITY_COLUMNS, 1 / 3)}
        for r in test
        for column in LABEL_COLUMNS
    ]
    table(submission, ["row_id", *SEVERITY_COLUMNS], SAMPLE_SUBMISSION_CSV)


def make_dataset(
    out_dir: Path,
    n_train: int = 48,
    n_test: int = 8,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    missing_series_fraction: float = 0.0,
    label_noise: float = 0.0,
) -> Path:
    """Write a synthetic dataset in the competition layout to ``out_dir`` and return ``out_dir``.

    Earlier output of this function in ``out_dir`` is replaced; nothing else there is touched.
    ``missing_series_fraction`` of the test studies lose one sagittal series, as some hidden-test
    studies do. ``label_noise`` of the labelled ``train.csv`` cells are flipped to another severity and
    listed in ``label_flips.csv`` (images, coordinates and the hidden test labels keep the truth).
    """
    if n_train < 0 or n_test < 0 or not 0.0 <= missing_series_fraction <= 1.0 or not 0.0 <= label_noise <= 1.0:
        raise ValueError(
            f"need n_train, n_test >= 0 and missing_series_fraction, label_noise in [0, 1], got "
            f"{n_train}, {n_test}, {missing_series_fraction}, {label_noise}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir)
    tasks = _tasks(out_dir, n_train, n_test, seed, missing_series_fraction)
    records = _run(tasks, workers, progress)
    _write_tables(out_dir, tasks, records, label_noise, seed)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=48, help="number of training studies")
    parser.add_argument("--test", type=int, default=8, help="number of test studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--missing-series-fraction", type=float, default=0.0)
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help=f"fraction of train.csv labels flipped (listed in {LABEL_FLIPS_CSV})",
    )
    args = parser.parse_args(argv)
    out = make_dataset(
        args.out_dir,
        args.train,
        args.test,
        args.seed,
        args.workers,
        missing_series_fraction=args.missing_series_fraction,
        label_noise=args.label_noise,
    )
    for name in (n for n in _OUTPUT_FILES if (out / n).exists()):
        print(f"{out / name}: {len(pd.read_csv(out / name))} rows")
    for split in SPLITS:
        images = Paths(out, out).images_dir(split)
        print(f"{images}: {sum(1 for _ in images.rglob('*.dcm'))} DICOM files")


if __name__ == "__main__":
    main()
