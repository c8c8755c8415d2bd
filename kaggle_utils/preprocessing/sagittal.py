"""The sagittal arrays: stage-1 volumes and stage-2 per-level crops, cached as uint8 arrays.

Stage 1: every slice of a sagittal series resized to 256x256 (aspect not kept), windowed with the
series' 1st/99th percentiles of the native pixels -> ``(N, 256, 256)`` uint8, slices left to right.

Stage 2: per disc level one crop of every slice, from the level's two keypoints (the solution's
geometry, see ``level_boxes``) -> ``(5, N, 256, 256)`` uint8. The solution's steps and interpolations
(T2: rotate with Lanczos; crop; Lanczos resize of the longest side; centred zero padding), with the same
pixels, but the rotation is computed for the box only instead of the whole slice, and the resize of all slices
of a level is one cv2 call. Windowing comes after resampling, on the fewer output pixels, and the window's
percentiles come from a bracketed selection instead of a partition of all pixels (same values).
Missing or off-image keypoints leave their level black with a warning instead of failing the series.
One function serves training crops (keypoints from the coordinate table) and inference crops (keypoints
predicted by stage 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.labels import sort_level_points
from kaggle_utils.core.views import VIEWS, view_named
from kaggle_utils.io.dicom import Series, SeriesError
from kaggle_utils.preprocessing.intensity import intensity_window, resize_slice, to_uint8

MIN_SPAN_MM = 1.0
"""Outermost slices of a sagittal series closer than this along the normal claim one position (a series spans
tens of mm): their order can only come from the instance numbers."""


# --- stage 1 -------------------------------------------------------------------------------------
def check_series(series: Series, view: str) -> list[str]:
    """Refuse a series that cannot be read as its view (its slices in another plane: a description that does not
    match its images; fewer usable slices than ``View.min_slices``), saying why; return what is odd but usable (every
    slice at one position: ordered by instance number)."""
    spec = view_named(view)
    if series.plane != spec.plane:
        raise SeriesError(
            f"{series.folder}: listed as {spec.description}, but its slices are {series.plane}, not {spec.plane}: "
            "not read as one"
        )
    if series.n_slices < spec.min_slices:
        dropped = f" ({len(series.dropped)} files left out)" if series.dropped else ""
        raise SeriesError(
            f"{series.folder}: {series.n_slices} usable slices{dropped}; a {spec.description} series needs "
            f"{spec.min_slices} to show the canal and both sides"
        )
    if series.span_mm() < MIN_SPAN_MM:
        return [f"its {series.n_slices} slices claim one position (ImagePositionPatient): ordered by instance number"]
    return []


def weighting_mismatch(series: Series, view: str) -> tuple[str, str] | None:
    """(the view of the weighting its header's timings clearly state, and what its header says) where that is not
    ``view``, the view it is listed as (a description that does not match the images); None otherwise, and where no
    view of the same kind has that weighting."""
    listed = view_named(view)
    if series.weighting is None or series.weighting == listed.weighting:
        return None
    same_kind = [v for v in VIEWS.values() if v.plane == listed.plane and v.localised_per == listed.localised_per]
    other = next((v for v in same_kind if v.weighting == series.weighting), None)
    if other is None:
        return None
    said = f"listed as {listed.description}, but its header's timings ({series.timings}) are "
    return other.name, said + f"{series.weighting.upper()}-weighted"


def header_view(series: Series, view: str) -> tuple[str, str | None]:
    """The view to read a series as (``weighting_mismatch``'s where there is one, else ``view``), and why."""
    mismatch = weighting_mismatch(series, view)
    if mismatch is None:
        return view, None
    other, said = mismatch
    return other, f"{said}: read as {view_named(other).description}"


def stage1_volume(series: Series, cfg: PreprocessConfig, window: tuple[float, float] | None = None) -> np.ndarray:
    """``(N, size, size)`` uint8: every slice resized, windowed with the series' percentiles (pass ``window`` when
    it is already known, e.g. for :func:`stage2_crops` of the same series)."""
    if window is None:
        window = intensity_window(series.slices, cfg.percentiles)
    size = cfg.img_size
    # Windowing after resizing touches fewer pixels.
    resized = np.empty((series.n_slices, size, size), np.float32)
    for image, dst in zip(series.slices, resized, strict=True):
        resize_slice(image, size, dst)
    return to_uint8(resized, window)


# --- stage 2 geometry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelBox:
    """One level's crop in a slice of a given size: rotate by ``angle`` (degrees, counter-clockwise as
    displayed, about the image centre), then take ``[left, right) x [top, bottom)`` of the rotated image."""

    angle: float
    left: int
    top: int
    right: int
    bottom: int

    @property
    def empty(self) -> bool:
        return self.right - self.left < 2 or self.bottom - self.top < 2


EMPTY_BOX = LevelBox(angle=0.0, left=0, top=0, right=0, bottom=0)
"""The box of a level without usable keypoints: its crops stay black."""


def level_boxes(points: np.ndarray, view: str, width: int, height: int, cfg: PreprocessConfig) -> list[LevelBox]:
    """The solution's crop of each level in a ``width x height`` slice, from relative keypoints (5, 2, 2).

    With D = median disc width (front-back distance) and S = median spacing between levels:
    T2/STIR crops are rotated so the front->back line is horizontal and span
    x in [b - 1.125 D, b + 0.375 D], y in b +- 1.3 S around the back point b;
    T1 crops are not rotated and span the midpoint of the two foramina +- 1.25 h (relative to the width)
    horizontally and +- h vertically, h = ``t1_height_mult`` S (the solution's 1.0; 0.5 by default), S measured
    between the levels' midpoints. Boxes are clamped to the image, not padded.
    Levels with a missing (non-finite) point get an empty box; D and S come from the levels inside the image.
    """
    along_disc = _along_disc(view)
    points = sort_level_points(points)
    valid = np.isfinite(points).all(axis=(1, 2))
    inside = valid & ((points >= 0) & (points <= 1)).all(axis=(1, 2))
    # One level far off the image must not distort the crop size of the others.
    x_pct, y_pct = _crop_scale(points, inside if inside.sum() >= 2 else valid, view, cfg)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    size = np.array([width, height], np.float64)
    boxes = []
    for ok, a, b in zip(valid, points[:, 0] * size, points[:, 1] * size, strict=True):
        if not (ok and np.isfinite(x_pct) and np.isfinite(y_pct)):
            boxes.append(EMPTY_BOX)
            continue
        if along_disc:
            angle = float(np.degrees(np.arctan2(-(b[1] - a[1]), b[0] - a[0])))
            bx, by = rotate_points(b[None], -angle, centre)[0]
            x0 = int(bx) - cfg.t2_offset_mult * width * x_pct
            y0 = int(by)
        else:
            angle = 0.0
            x0, y0 = (a + b) / 2
        # Clamp before int(): far-off keypoints must give an empty box, not an overflow.
        boxes.append(
            LevelBox(
                angle=-angle,
                left=int(np.clip(x0 - width * x_pct, 0, width)),
                right=int(np.clip(x0 + width * x_pct, 0, width)),
                top=int(np.clip(y0 - height * y_pct, 0, height)),
                bottom=int(np.clip(y0 + height * y_pct, 0, height)),
            )
        )
    return boxes


def _along_disc(view: str) -> bool:
    """Whether the view's crops follow the disc (rotated, T2) or stand upright (T1); another geometry is an error."""
    geometry = view_named(view).crop
    if geometry not in ("along_disc", "upright"):
        raise ValueError(f"no crop geometry {geometry!r} (view {view!r})")
    return geometry == "along_disc"


def _crop_scale(points: np.ndarray, valid: np.ndarray, view: str, cfg: PreprocessConfig) -> tuple[float, float]:
    """(x_pct, y_pct) half-sizes relative to the image from the valid levels; NaN when they cannot tell."""
    levels = np.flatnonzero(valid)
    if len(levels) < 2:
        return float("nan"), float("nan")
    front, back = points[levels, 0], points[levels, 1]
    # Spacing per level step, so that a missing level in between does not double one spacing.
    steps = np.diff(levels)
    if _along_disc(view):
        x_pct = cfg.t2_width_mult * np.median(back[:, 0] - front[:, 0])
        y_pct = cfg.t2_height_mult * np.median(np.abs(np.diff(back[:, 1])) / steps)
    else:
        # The solution measures one side's points. The two foramina of a level sit at nearly the same height, and
        # which of them is "front" (smaller x) changes from level to level, so their mid-height spaces the levels
        # without a side's offset creeping in.
        mid_y = points[levels, :, 1].mean(axis=1)
        y_pct = cfg.t1_height_mult * np.median(np.abs(np.diff(mid_y)) / steps)
        x_pct = cfg.t1_width_mult * y_pct
    return float(x_pct), float(y_pct)


def rotation_matrix(angle: float, centre: np.ndarray) -> np.ndarray:
    """2x3 matrix rotating pixel coordinates by ``angle`` degrees (counter-clockwise as displayed)."""
    return cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)


def rotate_points(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    matrix = rotation_matrix(angle, centre)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_layout(box: LevelBox, out_size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, pad_x, pad_y): the crop's size after the longest-side resize and its centred offset."""
    crop_w, crop_h = box.right - box.left, box.bottom - box.top
    scale = out_size / max(crop_w, crop_h)
    new_w, new_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    return new_w, new_h, (out_size - new_w) // 2, (out_size - new_h) // 2


MAX_CV2_CHANNELS = 128
"""The most channels one cv2 array may have (OpenCV 5; 4.x allows 512)."""


def resize_stack(stack: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize a ``(H, W, N)`` stack to ``size`` = (width, height) in one cv2 call per 128 slices.

    The same pixels as resizing slice by slice (cv2 resamples channels independently), with less overhead per
    slice. Not for ``INTER_AREA`` shrinking, which cv2 limits to 4 channels.
    """
    parts = [
        cv2.resize(np.ascontiguousarray(stack[:, :, i : i + MAX_CV2_CHANNELS]), size, interpolation=interpolation)
        for i in range(0, stack.shape[2], MAX_CV2_CHANNELS)
    ]
    parts = [part.reshape(size[1], size[0], -1) for part in parts]  # cv2 drops the axis of a single channel
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def box_pixels(image: np.ndarray, box: LevelBox) -> np.ndarray:
    """The box of one slice rotated by ``box.angle`` about its centre, at native resolution.

    Only the box is resampled: a rotation whose translation also moves the box's corner to the origin gives the
    pixels of rotating the whole slice and then cropping (the solution's way, same Lanczos kernel and reflected
    border), for the price of the box's pixels instead of the slice's.
    """
    if box.angle == 0:
        return image[box.top : box.bottom, box.left : box.right]
    height, width = image.shape
    matrix = rotation_matrix(box.angle, np.array([(width - 1) / 2, (height - 1) / 2]))
    matrix[:, 2] -= (box.left, box.top)
    return cv2.warpAffine(
        np.asarray(image, np.float32),
        matrix,
        (box.right - box.left, box.bottom - box.top),
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_REFLECT_101,  # the solution's rotation border
    )


def crop_stack(slices: Sequence[np.ndarray], box: LevelBox, out_size: int) -> np.ndarray:
    """One level's crop of slices of one size, resized so that its longest side is ``out_size``:
    ``(new_h, new_w, n)`` float32, the part of the padded output that :func:`crop_layout` places."""
    new_w, new_h, _, _ = crop_layout(box, out_size)
    boxes = np.stack([box_pixels(image, box) for image in slices], axis=-1).astype(np.float32, copy=False)
    return resize_stack(boxes, (new_w, new_h), cv2.INTER_LANCZOS4)


def stage2_crops(
    series: Series, points: np.ndarray, view: str, cfg: PreprocessConfig, window: tuple[float, float] | None = None
) -> np.ndarray:
    """``(5, N, size, size)`` uint8 per-level crops of every slice from relative keypoints (5, 2, 2).

    Keypoints that are missing, degenerate or outside the image never fail the series: the levels they
    leave without a usable box stay black, and a warning names the series and the levels. ``window``: the
    series' intensity window when it is already known (e.g. from :func:`stage1_volume`).
    """
    points = np.asarray(points, np.float64)
    if window is None:
        window = intensity_window(series.slices, cfg.percentiles)
    size = cfg.img_size
    out = np.zeros((len(points), series.n_slices, size, size), np.uint8)  # padding stays black
    empty: set[int] = set()
    for (height, width), indices in _slices_by_shape(series):
        slices = [series.slices[i] for i in indices]
        at = slice(None) if len(indices) == series.n_slices else indices
        for level, box in enumerate(level_boxes(points, view, width, height, cfg)):
            if box.empty:
                empty.add(level)
                continue
            new_w, new_h, pad_x, pad_y = crop_layout(box, size)
            crops = to_uint8(crop_stack(slices, box, size), window)  # window after resizing, as the solution
            # cv2 works on (h, w, slice) stacks; the cache keeps each slice contiguous (see ARRAYS_VERSION).
            out[level, at, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = crops.transpose(2, 0, 1)
    _warn_about_points(series, points, sorted(empty))
    return out


def _warn_about_points(series: Series, points: np.ndarray, empty: list[int]) -> None:
    finite = np.isfinite(points)
    outside = sorted({int(lv) for lv in np.flatnonzero((finite & ((points < 0) | (points > 1))).any(axis=(1, 2)))})
    if outside:
        warnings.warn(f"{series.folder}: keypoints outside the image at levels {outside}", stacklevel=3)
    if empty:
        missing = sorted(int(lv) for lv in np.flatnonzero(~finite.all(axis=(1, 2))))
        warnings.warn(
            f"{series.folder}: empty crop at levels {empty} (degenerate, missing {missing} or off-image keypoints); "
            "left black",
            stacklevel=3,
        )


def _slices_by_shape(series: Series) -> list[tuple[tuple[int, int], list[int]]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(series.slices):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.items())
