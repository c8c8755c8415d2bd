"""The phantom's anatomy: the spine's vertebra and disc tables, the conditions (family, side and the series
that carries each label point), the anatomy factor each severity class draws, and the ``Phantom`` of one study
with ``draw_phantom``, which walks a random spine whose labelled levels show given severities.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from kaggle_utils.core.constants import (
    AXIAL_T2,
    CONDITION_FAMILIES,
    CONDITIONS,
    LEVEL_NAMES,
    SAGITTAL_T1,
    SAGITTAL_T2,
    condition_family,
)

LEFT, RIGHT = 0, 1  # side index of per-side anatomy; patient left is +x

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
SACRAL_DISCS = np.array([name.startswith("S") for name in DISC_NAMES])
_L3 = VERTEBRAE.index("L3")


def disc_below(vertebra: str) -> int:
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
# Anatomy factor drawn per severity class: (low, high) of a uniform draw; 1 = normal anatomy.
_CANAL_RATIO = ((0.85, 1.0), (0.45, 0.58), (0.15, 0.25))
_FORAMEN_FACTOR = ((0.85, 1.1), (0.52, 0.66), (0.2, 0.3))
_RECESS_FACTOR = ((0.85, 1.05), (0.5, 0.62), (0.18, 0.3))


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
        return self.landmark(disc, self.posterior_wall(disc) + FORAMEN_U, FORAMEN_V, _side_sign(side) * FORAMEN_X)

    def recess_centre(self, disc: int, side: int) -> np.ndarray:
        return self.landmark(disc, self.posterior_wall(disc) + RECESS_U, 0.0, _side_sign(side) * RECESS_X)

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
FORAMEN_U, FORAMEN_V, FORAMEN_X = 5.0, 4.0, 20.0
FORAMEN_RADII = (5.0, 9.0, 7.0)  # AP, height, lateral half-length
RECESS_U, RECESS_X = 3.5, 11.0
RECESS_RADII = (3.8, 3.2, 9.0)  # lateral, AP, height


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
    lordosis = np.where(SACRAL_DISCS, rng.uniform(0.85, 1.1), rng.uniform(0.6, 1.3))
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
    foramen = np.where(SACRAL_DISCS[:, None], 0.0, rng.uniform(0.9, 1.1, (n_discs, 2)))
    recess = np.where(SACRAL_DISCS[:, None], 0.0, rng.uniform(0.9, 1.05, (n_discs, 2)))
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
        arc_conus=float(arc[disc_below("T12")] + rng.uniform(-8.0, 10.0)),
        arc_thecal_end=float(arc[disc_below("S1")] - heights[VERTEBRAE.index("S2")] / 2),  # mid S2
        arc_bifurcation=float(arc[disc_below("L4")] + heights[VERTEBRAE.index("L4")] / 2),  # mid L4
        arc_tail=float(arc[-1] - disc_heights[-1] / 2 - heights[-1]),
        fine_waves=_waves(rng, 6, (4.0, 9.0)),
        coarse_waves=_waves(rng, 6, (18.0, 45.0)),
        bias_waves=_waves(rng, 2, (250.0, 450.0)),
    )
