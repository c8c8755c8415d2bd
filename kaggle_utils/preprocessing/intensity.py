"""Intensities and sizes of native slices: a series' window (its 1st/99th percentiles of all native pixels, exactly
and several times faster than a partition of them), the window applied to uint8, one slice resized.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

_SAMPLE_STRIDE = 37  # prime: rarely divides a row width, so the sample does not keep to a few columns
_SAMPLE_MARGIN = 0.01  # bracket half-width around a rank, as a fraction of the sample


def intensity_window(slices: Iterable[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) window of a series: percentiles over all native pixels of all slices together."""
    low, high = percentiles_of(list(slices), percentiles)
    return low, high


def percentiles_of(arrays: Sequence[np.ndarray], percentiles: Sequence[float]) -> list[float]:
    """``np.percentile`` (its default linear method) of all values of ``arrays`` together, exactly, several times
    faster on a series' pixels.

    Partitioning all pixels of a series was the largest single cost of preprocessing. A sorted strided sample
    brackets each wanted rank; one pass over the arrays keeps the values on the rank's side of the bracket (a few
    per cent), and only those are partitioned. An unlucky sample whose bracket misses the rank falls back to
    partitioning everything. Array by array rather than concatenated: each fits in the CPU cache, and no copy
    of the whole series is made.
    """
    arrays = [np.asarray(a, np.float32).ravel() for a in arrays]
    n = sum(a.size for a in arrays)
    if n < 100 * _SAMPLE_STRIDE:  # too few for a useful sample
        return [float(v) for v in np.percentile(np.concatenate(arrays), percentiles)]
    sample = np.sort(np.concatenate([a[::_SAMPLE_STRIDE] for a in arrays]))
    result = []
    for q in percentiles:
        position = q / 100 * (n - 1)
        rank = int(position)
        a, b = _order_statistics(arrays, n, sample, rank, min(rank + 1, n - 1))
        t = position - rank
        # numpy's interpolation formula, so that the result is the same to the last bit in practice
        result.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return result


def _order_statistics(
    arrays: list[np.ndarray], n: int, sample: np.ndarray, first: int, second: int
) -> tuple[float, float]:
    """The values at ranks ``first`` <= ``second`` (0-based, close together) of the ``n`` values of ``arrays``
    sorted together."""
    m = sample.size
    centre, margin = int(first * (m - 1) / (n - 1)), max(8, int(m * _SAMPLE_MARGIN))
    low, high = sample[max(0, centre - margin)], sample[min(m - 1, centre + margin + 1)]
    # One pass over all values keeps the side of the bracket nearer the rank's end (a few % for the 1st or the
    # 99th percentile); the other bound then only filters that small part.
    if first < n // 2:
        part = np.concatenate([a[a <= high] for a in arrays])
        below = np.count_nonzero(part < low)
        inside = part[part >= low]
    else:
        part = np.concatenate([a[a >= low] for a in arrays])
        below = n - part.size
        inside = part[part <= high]
    ranks = [first - below, second - below]
    if ranks[0] < 0 or ranks[1] >= inside.size:  # the sample misled the bracket: select among all values
        inside, ranks = np.concatenate(arrays), [first, second]
    found = np.partition(inside, ranks)[ranks]
    return float(found[0]), float(found[1])


def to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the window and scale to 0..255, rounded. A constant series (empty window) becomes all zeros."""
    low, high = window
    image = np.asarray(image, np.float32)
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    scale = 255.0 / (high - low)
    # One cv2 pass scales, rounds and saturates (numpy needs four); as 2-D, since cv2 limits the channel count.
    flat = np.ascontiguousarray(image).reshape(-1, image.shape[-1] if image.ndim > 1 else image.size)
    return cv2.addWeighted(flat, scale, flat, 0.0, -low * scale, dtype=cv2.CV_8U).reshape(image.shape)


def resize_slice(image: np.ndarray, size: int, dst: np.ndarray | None = None) -> np.ndarray:
    """Resize one slice to size x size, ignoring the aspect ratio (relative coordinates stay valid)."""
    h, w = image.shape
    # Area averaging when shrinking avoids aliasing; Lanczos when enlarging keeps edges sharp. Slice by slice:
    # cv2's area resampling takes at most 4 channels at non-integer factors and is slower on stacks anyway.
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LANCZOS4
    return cv2.resize(np.asarray(image, np.float32), (size, size), dst=dst, interpolation=interpolation)
