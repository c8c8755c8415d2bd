"""The rotation TTA: sample-major, counter-clockwise, at the requested size."""

from __future__ import annotations

import torch

from kaggle_utils.models.resample import rotate_resize


def test_rotate_resize_is_sample_major_and_rotates_counter_clockwise():
    images = torch.rand(2, 3, 17, 17)
    out = rotate_resize(images, [0.0, 90.0], 17)
    assert out.shape == (4, 3, 17, 17)
    assert torch.allclose(out[0], images[0], atol=1e-6) and torch.allclose(out[2], images[1], atol=1e-6)
    assert torch.allclose(out[1], torch.rot90(images[0], 1, dims=(-2, -1)), atol=1e-4)
    assert torch.allclose(out[3], torch.rot90(images[1], 1, dims=(-2, -1)), atol=1e-4)


def test_rotate_resize_output_size():
    out = rotate_resize(torch.rand(3, 5, 64, 64), [0.0, -15.0, 15.0], 24)
    assert out.shape == (9, 5, 24, 24) and ((out >= 0) & (out <= 1)).all()
