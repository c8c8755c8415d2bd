"""Frames of a sample: the middle slices, padded and reversed, from an array or straight from its file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kaggle_utils.io import frames
from kaggle_utils.io.frames import array_shape, read_frames, select_frames, take_frames


@pytest.mark.parametrize(
    ("n_total", "n_frames", "indices"),
    [(10, 4, [3, 4, 5, 6]), (11, 4, [3, 4, 5, 6]), (4, 4, [0, 1, 2, 3]), (3, 8, [-1, -1, 0, 1, 2, -1, -1, -1])],
)
def test_middle_frames_and_symmetric_padding(n_total, n_frames, indices):
    chosen, mask = select_frames(n_total, n_frames)
    assert chosen.tolist() == indices
    assert mask.tolist() == [i >= 0 for i in indices]


@pytest.mark.parametrize(("n_total", "n_frames"), [(3, 5), (4, 5), (7, 3), (6, 6), (0, 2)])
def test_take_frames_equals_indexing_by_the_selected_slices(n_total, n_frames):
    array = np.random.default_rng(0).integers(1, 256, (2, n_total, 3, 4), dtype=np.uint8)  # (levels, N, H, W)
    taken, mask = take_frames(array, n_frames)
    indices, expected_mask = select_frames(n_total, n_frames)
    assert taken.shape == (2, n_frames, 3, 4) and mask.tolist() == expected_mask.tolist()
    for i, source in enumerate(indices):
        assert (taken[:, i] == (array[:, source] if source >= 0 else 0)).all()


@pytest.mark.parametrize(("n_total", "n_frames"), [(3, 6), (8, 5), (5, 5)])
def test_reversed_frames_are_the_frames_reversed_written_into_the_given_row(n_total, n_frames):
    array = np.random.default_rng(1).integers(1, 256, (n_total, 2, 3), dtype=np.uint8)  # (N, H, W)
    forward, mask = take_frames(array, n_frames)
    row = np.full((n_frames, 2, 3), 7, np.uint8)  # a reused batch row: stale bytes must not survive
    backward, reversed_mask = take_frames(array, n_frames, out=row, reverse=True)
    assert backward is row
    np.testing.assert_array_equal(backward, forward[::-1])
    assert reversed_mask.tolist() == mask[::-1].tolist()
    message = rf"slices of shape \({n_total}, 2, 3\) do not fit a batch row of \({n_frames}, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        take_frames(array, n_frames, out=np.empty((n_frames, 3, 3), np.uint8))


CASES = [(n_total, n_frames) for n_total in (0, 1, 3, 4, 7) for n_frames in (1, 4, 6)]


def _cached(tmp_path: Path, shape: tuple[int, ...], seed: int = 0, name: str = "a.npy") -> tuple[Path, np.ndarray]:
    array = np.random.default_rng(seed).integers(1, 256, shape, dtype=np.uint8)
    np.save(tmp_path / name, array)
    return tmp_path / name, array


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("n_total", "n_frames"), CASES)
@pytest.mark.parametrize("levels", [(), (3,)])
def test_read_frames_reads_what_take_frames_takes(tmp_path, levels, n_total, n_frames, reverse):
    path, array = _cached(tmp_path, (*levels, n_total, 5, 4))
    expected, expected_mask = take_frames(array, n_frames, reverse=reverse)
    row = np.full(expected.shape, 7, np.uint8)  # a reused batch row: stale bytes must not survive
    mask = read_frames(path, n_frames, row, reverse=reverse)
    np.testing.assert_array_equal(row, expected)
    assert mask.tolist() == expected_mask.tolist()
    assert array_shape(path) == array.shape


def test_more_frames_than_one_read_call_takes(tmp_path):
    path, array = _cached(tmp_path, (2, 1100, 2, 3))
    for reverse in (False, True):
        row = np.empty((2, 1200, 2, 3), np.uint8)
        read_frames(path, 1200, row, reverse=reverse)
        np.testing.assert_array_equal(row, take_frames(array, 1200, reverse=reverse)[0])


def test_a_rewritten_file_is_read_with_its_new_header(tmp_path):
    path, _ = _cached(tmp_path, (4, 5, 4))
    assert array_shape(path) == (4, 5, 4)
    replacement, array = _cached(tmp_path, (6, 5, 4), seed=1, name="b.npy")
    os.replace(replacement, path)  # as preprocessing writes: a new file renamed over the old one
    row = np.empty((6, 5, 4), np.uint8)
    read_frames(path, 6, row)
    np.testing.assert_array_equal(row, array)


def test_bad_files_and_rows_are_named(tmp_path):
    path, _ = _cached(tmp_path, (4, 5, 4))
    with pytest.raises(ValueError, match=r"a\.npy.* do not fit a batch row of \(3, 5, 5\)"):
        read_frames(path, 3, np.empty((3, 5, 5), np.uint8))
    truncated = tmp_path / "short.npy"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short\.npy: truncated"):
        read_frames(truncated, 3, np.empty((3, 5, 4), np.uint8))
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((4, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"floats\.npy: expected a C-ordered uint8 array"):
        array_shape(floats)
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    with pytest.raises(ValueError, match=r"text\.npy: not a \.npy array"):
        array_shape(text)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_frames(tmp_path / "missing.npy", 3, np.empty((3, 5, 4), np.uint8))


def test_without_preadv_the_file_is_mapped_instead(tmp_path, monkeypatch):
    path, array = _cached(tmp_path, (3, 7, 5, 4))
    monkeypatch.delattr(os, "preadv")
    row = np.empty((3, 9, 5, 4), np.uint8)
    mask = read_frames(path, 9, row, reverse=True)
    expected, expected_mask = take_frames(array, 9, reverse=True)
    np.testing.assert_array_equal(row, expected)
    assert mask.tolist() == expected_mask.tolist()
    assert frames.frame_span(7, 9).mask.tolist() == select_frames(7, 9)[1].tolist()
