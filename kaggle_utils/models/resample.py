"""Resampling of image batches on the device, shared by the training augmentation and the rotation TTA.

Training (the solution's LANCZOS4) and TTA (its bicubic) resizes both went through cv2 without antialiasing; one
shared non-antialiased bicubic keeps train and test images alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def in_float32(device: torch.device) -> Iterator[None]:
    """Run resampling and augmentation in float32, even inside an autocast region (interpolation and clamps need it)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


RESIZE_MODE = "bicubic"


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) resized to (size, size) with clipped bicubic interpolation; unchanged if already so."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=RESIZE_MODE, align_corners=False).clamp_(0.0, 1.0)


def rotate_resize(images: torch.Tensor, angles: Sequence[float], size: int) -> torch.Tensor:
    """Deterministic rotation TTA: (B, C, H, W) -> (B * len(angles), C, size, size), sample-major.

    Each sample is rotated by every angle (degrees, counter-clockwise as cv2, about the centre, bilinear,
    reflect-101 border) and resized bicubically. The whole batch is rotated one angle at a time, so only
    one full-resolution copy exists at once (B x C x H x W floats, not len(angles) times that).
    """
    with in_float32(images.device):
        images = images.float()
        views = [resize(_rotate(images, angle), size) for angle in angles]
        return torch.stack(views, dim=1).flatten(0, 1)


def _rotate(images: torch.Tensor, angle: float) -> torch.Tensor:
    if angle == 0:  # the plain view stays exact
        return images
    theta = torch.full((images.shape[0],), float(angle), device=images.device)
    return KT.rotate(images, theta, mode="bilinear", padding_mode="reflection", align_corners=True)
