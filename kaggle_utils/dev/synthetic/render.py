"""Rendering: approximate signed-distance helpers, the per-pixel frame that follows the spine, a painter's
canvas over soft masks, and ``render``, which paints body wall, vessels, posterior elements, foramina, vertebrae
and canal of a ``Phantom`` onto a grid of world points and applies the receive-coil bias field.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import cv2
import numpy as np

from kaggle_utils.dev.synthetic.anatomy import (
    DISC_NAMES,
    FORAMEN_RADII,
    FORAMEN_U,
    FORAMEN_V,
    FORAMEN_X,
    RECESS_RADII,
    RECESS_U,
    RECESS_X,
    SACRAL_DISCS,
    Phantom,
    disc_below,
)

T1, T2 = 0, 1  # index of a tissue's signal in TISSUES

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
_EDGE_MM = 0.8  # width of the soft edge of every structure


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
    last_lumbar = walls[~SACRAL_DISCS][-1]
    walls[SACRAL_DISCS, 1] = last_lumbar[1] + 0.5 * (walls[SACRAL_DISCS, 1] - last_lumbar[1])
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
    top = ph.disc_arc[disc_below("T12")]
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
    lumbar = ~SACRAL_DISCS[f.disc]
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
    lumbar = ~SACRAL_DISCS[f.disc]
    zone = _intersect(_band_sdf(side_x, 11.0, 28.0), _band_sdf(behind, 0.0, 12.0))
    canvas.paint(_inside(zone, 1.2) * lumbar, "fibrous")

    factor = ph.foramen[f.disc, f.side]
    ru, rv, rx = FORAMEN_RADII
    du, dv, dx = behind - FORAMEN_U, f.v - FORAMEN_V, side_x - FORAMEN_X
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
    canvas.paint(_inside(core, 2.5) * ~SACRAL_DISCS[f.disc], nucleus_tone)


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
    rx, ru, rv = RECESS_RADII
    du, dx = f.u - f.wall - RECESS_U, np.abs(f.x) - RECESS_X
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
