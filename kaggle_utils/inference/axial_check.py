"""The axial localiser checked against the sagittal keypoints at inference.

A level's Sagittal T2 point projected onto its assigned axial slice says where the canal is, independently of the
axial localiser. When the localiser's midpoint lies more than ``MAX_CENTRE_OFFSET_MM`` from it, or its two points
are implausibly close or far apart (``LEFT_RIGHT_MM``), the pair is recentred on the projected point (keeping its
left-right offset when that is plausible, else ``DEFAULT_HALF_WIDTH_MM`` either side along the image rows). Either
way the two points are then named by patient x (LPS: the patient's left has the larger x), not by the model's
output order. ``check_points`` says whether it had to recentre; inference counts and prints those levels.
"""

from __future__ import annotations

import numpy as np

MAX_CENTRE_OFFSET_MM = 15.0
"""The localiser's midpoint farther than this from the projected sagittal canal point is not trusted."""

LEFT_RIGHT_MM = (8.0, 50.0)
"""Plausible distance between a level's left and right subarticular points (the competition's: about 10-50 mm)."""

DEFAULT_HALF_WIDTH_MM = 11.0
"""Half the left-right distance given to a recentred pair whose own distance was implausible."""


def check_points(
    points: np.ndarray, projected: np.ndarray, shape: tuple[int, int], spacing: np.ndarray, orientation: np.ndarray
) -> tuple[np.ndarray, bool]:
    """A level's (2, 2) relative (left, right) localiser points on a slice of ``shape`` (rows, columns), PixelSpacing
    ``spacing`` (row, column mm) and ImageOrientationPatient ``orientation``, checked against the projected
    sagittal point ``projected`` (pixel x, y): the points to use, left first, and whether they were recentred."""
    scale = np.array([shape[1], shape[0]], np.float64)
    mm = np.array([spacing[1], spacing[0]], np.float64)  # per pixel along x (columns), y (rows)
    pixels = np.asarray(points, np.float64) * scale
    centre = pixels.mean(axis=0)
    offset_mm = np.linalg.norm((centre - projected) * mm)
    width_mm = np.linalg.norm((pixels[0] - pixels[1]) * mm)
    plausible_width = LEFT_RIGHT_MM[0] <= width_mm <= LEFT_RIGHT_MM[1]
    recentred = offset_mm > MAX_CENTRE_OFFSET_MM or not plausible_width
    if recentred:
        half = (pixels[0] - pixels[1]) / 2 if plausible_width else np.array([DEFAULT_HALF_WIDTH_MM / mm[0], 0.0])
        pixels = np.asarray(projected, np.float64) + np.stack([half, -half])
    iop = np.asarray(orientation, np.float64).reshape(6)
    patient_x = pixels[:, 0] * mm[0] * iop[0] + pixels[:, 1] * mm[1] * iop[3]  # relative to the slice corner
    if patient_x[0] < patient_x[1]:
        pixels = pixels[::-1]
    return pixels / scale, bool(recentred)
