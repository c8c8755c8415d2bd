"""Test helpers: images with a blob on each keypoint, and where the blobs went after a warp."""

from __future__ import annotations

import torch


def blobs(keypoints: torch.Tensor, size: int, sigma: float = 2.0) -> torch.Tensor:
    """(B, N, size, size): channel k holds one Gaussian blob centred on keypoint k (pixel x, y)."""
    grid = torch.arange(size, dtype=torch.float32)
    dx = grid[None, None, None, :] - keypoints[..., 0, None, None]
    dy = grid[None, None, :, None] - keypoints[..., 1, None, None]
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))


def peaks_near(images: torch.Tensor, points: torch.Tensor, radius: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, 2) pixel (x, y) and (B, C) value of each channel's maximum within ``radius`` of its point.

    A window rather than the whole image: zooming out with reflection padding shows mirrored blob copies.
    """
    size = images.shape[-1]
    where, value = torch.zeros_like(points), torch.zeros(points.shape[:2])
    for b, c in torch.cartesian_prod(torch.arange(points.shape[0]), torch.arange(points.shape[1])).tolist():
        x0, y0 = (int(v.round().clamp(radius, size - 1 - radius)) - radius for v in points[b, c])
        window = images[b, c, y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        value[b, c], flat = window.max(), int(window.argmax())
        where[b, c] = torch.tensor([x0 + flat % window.shape[1], y0 + flat // window.shape[1]], dtype=torch.float32)
    return where, value
