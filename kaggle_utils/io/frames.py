"""The frames of a sample: the middle ``n_frames`` slices of a cached array, zero-padded, optionally reversed.

Arrays are cached slices first (``(N, H, W)``, or ``(5, N, H, W)`` for crops), so a run of slices is one
contiguous block per level. ``take_frames`` copies it from an array in memory (inference); ``read_frames`` reads
it from the ``.npy`` file straight into a row of a batch buffer, one ``preadv`` call per level, without mapping the
file or parsing its header again (a loader reads thousands of samples an epoch; the header of each file is read
once and kept while the file is unchanged).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Span(NamedTuple):
    """Frames ``[first, stop)`` of the output hold slices ``[start, start + stop - first)`` of the array (in reverse
    order when reversed); the other frames are padding. ``mask`` marks the real frames."""

    first: int
    stop: int
    start: int
    mask: np.ndarray


def frame_span(n_total: int, n_frames: int, reverse: bool = False) -> Span:
    """Where the middle ``n_frames`` of ``n_total`` slices go: one contiguous run of the output.

    With fewer slices than frames the series is padded symmetrically (the extra pad on the right).
    """
    start = max(n_total - n_frames, 0) // 2  # the first slice taken
    first = max(n_frames - n_total, 0) // 2  # the first real frame, after the left padding
    stop = first + min(n_total, n_frames)
    if reverse:
        first, stop = n_frames - stop, n_frames - first
    mask = np.zeros(n_frames, bool)
    mask[first:stop] = True
    return Span(first, stop, start, mask)


def select_frames(n_total: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The slice index of every frame (-1 marks padding) and the validity mask: :func:`frame_span` as indices."""
    span = frame_span(n_total, n_frames)
    indices = np.full(n_frames, -1)
    indices[span.first : span.stop] = np.arange(span.start, span.start + span.stop - span.first)
    return indices, span.mask


def _padded(out: np.ndarray, span: Span) -> None:
    out[..., : span.first, :, :] = 0
    out[..., span.stop :, :, :] = 0


def _out(shape: tuple[int, ...], n_frames: int, out: np.ndarray | None, path: Path | str | None = None) -> np.ndarray:
    *lead, _, height, width = shape
    wanted = (*lead, n_frames, height, width)
    if out is None:
        return np.empty(wanted, np.uint8)
    if out.shape != wanted:
        where = f"{path}: " if path is not None else ""
        raise ValueError(f"{where}slices of shape {tuple(shape)} do not fit a batch row of {out.shape}")
    return out


def take_frames(
    array: np.ndarray, n_frames: int, out: np.ndarray | None = None, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The middle ``n_frames`` slices of an array shaped ``(..., N, H, W)``, zero-padded: ``(..., n_frames, H, W)``,
    into ``out`` when given (a row of a batch buffer); and the mask. ``reverse`` takes them in reverse order."""
    out = _out(array.shape, n_frames, out)
    span = frame_span(array.shape[-3], n_frames, reverse)
    _padded(out, span)
    if span.stop > span.first:
        source = array[..., span.start : span.start + span.stop - span.first, :, :]
        out[..., span.first : span.stop, :, :] = source[..., ::-1, :, :] if reverse else source
    return out, span.mask


class _Header(NamedTuple):
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size) of the file it was read from
    shape: tuple[int, ...]
    offset: int


_HEADERS: dict[str, _Header] = {}
_MAX_BUFFERS = 512  # buffers per preadv call, below every system's IOV_MAX


def _header(path: str, fd: int) -> _Header:
    """The shape and data offset of a uint8 ``.npy`` file, from the cache while the file is unchanged."""
    status = os.fstat(fd)
    stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
    known = _HEADERS.get(path)
    if known is not None and known.stamp == stamp:
        return known
    with open(fd, "rb", buffering=0, closefd=False) as file:
        try:
            version = np.lib.format.read_magic(file)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(file)
        except ValueError as error:
            raise ValueError(f"{path}: not a .npy array ({error})") from error
        offset = file.tell()
    if dtype != np.uint8 or fortran_order or len(shape) < 3:
        raise ValueError(f"{path}: expected a C-ordered uint8 array of slices, found {dtype} {shape}")
    if status.st_size != offset + int(np.prod(shape)):
        raise ValueError(f"{path}: truncated ({status.st_size} bytes for an array of shape {shape})")
    header = _HEADERS[path] = _Header(stamp, tuple(shape), offset)
    return header


def array_shape(path: Path | str) -> tuple[int, ...]:
    """The shape of a cached ``.npy`` array, from its header."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _header(str(path), fd).shape
    finally:
        os.close(fd)


def read_frames(path: Path | str, n_frames: int, out: np.ndarray, reverse: bool = False) -> np.ndarray:
    """:func:`take_frames` of the cached array at ``path``, read into ``out``; returns the mask.

    Each level's run of slices is one ``preadv`` call, whose buffers are the output frames (in reverse order for
    ``reverse``), so the bytes go from the page cache straight into the batch.
    """
    if not hasattr(os, "preadv"):  # Windows: map the file instead
        return take_frames(np.load(path, mmap_mode="r"), n_frames, out, reverse)[1]
    fd = os.open(path, os.O_RDONLY)
    try:
        header = _header(str(path), fd)
        out = _out(header.shape, n_frames, out, path)
        *_, n_total, height, width = header.shape
        span = frame_span(n_total, n_frames, reverse)
        _padded(out, span)
        frame_bytes = height * width
        for level, frames in enumerate(out.reshape(-1, n_frames, height, width)):
            views = [memoryview(frames[i]).cast("B") for i in range(span.first, span.stop)]
            in_file_order = views[::-1] if reverse else views
            offset = header.offset + (level * n_total + span.start) * frame_bytes
            for k in range(0, len(in_file_order), _MAX_BUFFERS):
                chunk = in_file_order[k : k + _MAX_BUFFERS]
                if os.preadv(fd, chunk, offset + k * frame_bytes) != len(chunk) * frame_bytes:
                    raise ValueError(f"{path}: changed while being read")
    finally:
        os.close(fd)
    return span.mask
