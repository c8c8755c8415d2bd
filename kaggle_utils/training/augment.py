"""Batch augmentation on the GPU (or CPU) in tensor ops: the stage-1 and stage-2 pipelines and their
photometric ops (the geometric warps are in ``warps``, the resize and the rotation TTA in ``resample``).

Frames are channels: a batch is (B, C, H, W) float in [0, 1], C = frames (stage 1) or 5 levels x frames
(stage 2). Every op draws its random parameters per sample and applies them to all channels, which is
what the solution gets by calling albumentations once on the (H, W, C) stack of a sample.

Each op is a few tensor lines, closer to albumentations than kornia's ops and faster: brightness/contrast (one
multiply-add and a single clip), Gaussian noise (variance range), the 3x3 blurs (motion blur's random-line
kernel, cv2's fixed Gaussian kernel, an exact median), vertical flip and single-pixel coarse dropout.

**Nothing here waits for the GPU.** Random parameters are drawn on the device, which samples take an optional
op is drawn on the host, and host numbers reach the device through pinned memory (``devices.on_device``). A plain copy
from host memory, or reading a device value, would make the host wait until all queued work is done, so it
could not queue the augmentation while the GPU still runs the previous step's backward pass; kornia's random
augmentations do both (their parameters are drawn on the host and copied over).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.devices import on_device, uniform
from kaggle_utils.models.resample import in_float32, resize
from kaggle_utils.training.warps import GridDistortion, OpticalDistortion, ShiftScaleRotate

BRIGHTNESS_LIMIT = 0.4  # additive, in [0, 1] units (albumentations brightness_by_max on uint8)
CONTRAST_LIMIT = 0.25  # multiplicative
NOISE_VAR_RANGE = (3.0, 9.0)  # GaussNoise variance on the 0-255 scale
DROPOUT_HOLES = (50, 250)  # single-pixel holes per sample, inclusive


def brightness_contrast(images: torch.Tensor) -> torch.Tensor:
    """albumentations RandomBrightnessContrast(0.4, 0.25) on [0, 1] images: ``x * alpha + beta``, one clip."""
    b = images.shape[0]
    alpha = uniform(b, 1 - CONTRAST_LIMIT, 1 + CONTRAST_LIMIT, images)
    beta = uniform(b, -BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT, images)
    return (images * alpha + beta).clamp_(0.0, 1.0)


class GaussianNoise(nn.Module):
    """Additive per-pixel Gaussian noise whose variance is drawn per sample from ``NOISE_VAR_RANGE`` / 255**2."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        std = uniform(images.shape[0], *NOISE_VAR_RANGE, images).sqrt_() / 255.0
        return (images + torch.randn_like(images) * std).clamp_(0.0, 1.0)


def _med3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


class MedianBlur3(nn.Module):
    """Exact 3x3 median filter (replicated border, as cv2.medianBlur) from min/max of shifted views.

    Sorting each vertical triple once and combining neighbouring columns (max of lows, median of middles,
    min of highs) needs no 9x patch tensor, unlike kornia's median blur, which takes seconds per batch on
    the CPU.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
        up, centre, down = padded[..., :-2, :], padded[..., 1:-1, :], padded[..., 2:, :]
        low = torch.minimum(torch.minimum(up, centre), down)
        high = torch.maximum(torch.maximum(up, centre), down)
        mid = _med3(up, centre, down)

        def columns(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return t[..., :-2], t[..., 1:-1], t[..., 2:]

        max_low = torch.maximum(torch.maximum(*columns(low)[:2]), columns(low)[2])
        min_high = torch.minimum(torch.minimum(*columns(high)[:2]), columns(high)[2])
        return _med3(max_low, _med3(*columns(mid)), min_high)


@functools.cache
def _line_kernels() -> torch.Tensor:
    """(3, 3, 3, 3, 3, 3) normalised 3x3 kernels of the line from (x1, y1) to (x2, y2), indexed [x1, y1, x2, y2],
    drawn by cv2.line as albumentations draws them."""
    kernels = torch.zeros(3, 3, 3, 3, 3, 3)
    for x1, y1, x2, y2 in itertools.product(range(3), repeat=4):
        line = cv2.line(np.zeros((3, 3), np.uint8), (x1, y1), (x2, y2), 1, thickness=1)
        kernels[x1, y1, x2, y2] = torch.from_numpy(line / line.sum())
    return kernels


class MotionBlur3(nn.Module):
    """albumentations 1.4.11 MotionBlur(3): a 3x3 kernel holding a random line, reflect-101 border.

    The line joins two distinct random cells of the kernel, as albumentations' default ``allow_shifted=True``
    draws it, so it need not pass through the centre: a line off the centre also shifts the image, by up to a
    pixel (stage-1 keypoints are not moved for it, as albumentations does not move them). kornia's motion blur
    only draws lines through the centre and pads with zeros, which darkens the border.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", _line_kernels(), persistent=False)

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """(B, 3, 3) kernels: columns x1, x2 and row y1 uniform; y2 another row when x1 = x2, else uniform."""

        def cells() -> torch.Tensor:
            return torch.randint(3, (b,), device=device)

        x1, x2, y1 = cells(), cells(), cells()
        other_row = (y1 + torch.randint(1, 3, (b,), device=device)) % 3
        return self.kernels[x1, y1, x2, torch.where(x1 == x2, other_row, cells())]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return filter3x3(images, self.draw(images.shape[0], images.device).to(images.dtype))


class GaussianBlur3(nn.Module):
    """albumentations 1.4.11 GaussianBlur(3): cv2.GaussianBlur with a 3x3 kernel and sigma 0, which takes cv2's
    fixed kernel (1, 2, 1) / 4 on each axis (not the Gaussian of sigma 0.8 that the formula in its docs gives)."""

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([0.25, 0.5, 0.25])
        self.register_buffer("kernel", taps[:, None] * taps[None, :], persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return filter3x3(images, self.kernel.to(images.dtype).expand(images.shape[0], 3, 3))


def filter3x3(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D (a correlation, reflect-101 border) of every channel of sample i with ``kernels[i]`` (3, 3)."""
    b, c, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect").reshape(1, b * c, h + 2, w + 2)
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1)  # (B * C, 1, 3, 3), one group per channel
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)


class VerticalFlip(nn.Module):
    """Rows upside down (with ``OneOf([VerticalFlip()], p)``: albumentations VerticalFlip(p))."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flip(-2)


class OneOf(nn.Module):
    """Per sample: with probability ``p`` apply one of ``ops`` (drawn uniformly), otherwise nothing.

    Each op runs once on the subset of samples that drew it, so the cost is that of one op on the chosen
    samples. The ops must apply themselves unconditionally (no probability of their own). With keypoints
    (``Distortion`` ops only), ``forward(images, points)`` returns both, moved together.
    """

    def __init__(self, ops: Sequence[nn.Module], p: float) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.p = p

    def forward(
        self, images: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.p <= 0:  # switched off: no random draws either, so the other ops draw as they would alone
            return images if points is None else (images, points)
        b = images.shape[0]
        # Drawn on the host: the rows each op takes are known there without reading the device back.
        applied = torch.rand(b) < self.p
        choice = torch.randint(len(self.ops), (b,))
        out, moved = images, points  # copied on first use: no copy when no sample drew an op
        for i, op in enumerate(self.ops):
            picked = (applied & (choice == i)).nonzero().squeeze(1)
            if not len(picked):
                continue
            rows = on_device(picked, images, torch.long)
            out = images.clone() if out is images else out
            if points is None:
                out.index_copy_(0, rows, op(images.index_select(0, rows)))
            else:
                moved = points.clone() if moved is points else moved
                warped, warped_points = op(images.index_select(0, rows), points.index_select(0, rows))
                out.index_copy_(0, rows, warped)
                moved.index_copy_(0, rows, warped_points)
        return out if points is None else (out, moved)


def distortion(p: float) -> OneOf:
    """albumentations OneOf([OpticalDistortion(1.0), GridDistortion(5, 1.0)], p)."""
    return OneOf([OpticalDistortion(), GridDistortion()], p)


def blur_or_noise(p: float = 0.5) -> OneOf:
    """albumentations OneOf([MotionBlur(3), MedianBlur(3), GaussianBlur(3), GaussNoise(3-9)], p)."""
    return OneOf(
        [
            MotionBlur3(),
            MedianBlur3(),
            GaussianBlur3(),
            GaussianNoise(),
        ],
        p,
    )


def coarse_dropout(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Per sample with probability ``p``: zero 50-250 random single pixels, the same ones in every channel."""
    b, _, h, w = images.shape
    n_max = DROPOUT_HOLES[1]
    n_holes = torch.randint(DROPOUT_HOLES[0], n_max + 1, (b, 1), device=images.device)
    applied = torch.rand(b, 1, device=images.device) < p
    used = applied & (torch.arange(n_max, device=images.device) < n_holes)  # (B, n_max)
    # Unused draws point at a spare slot past the image, so duplicates cannot undo a hole.
    pixels = torch.randint(h * w, (b, n_max), device=images.device).masked_fill_(~used, h * w)
    holes = torch.zeros(b, h * w + 1, dtype=torch.bool, device=images.device).scatter_(1, pixels, True)
    return images.masked_fill(holes[:, : h * w].view(b, 1, h, w), 0.0)


class Stage1Augment(nn.Module):
    """Stage-1 training augmentation of frames (B, C, H, W) and pixel keypoints (B, 10, 2) in (x, y).

    Brightness/contrast, then shift-scale-rotate, one of blur/noise (p = 0.5), one of optical/grid distortion
    (p = 0.5), then a resize to ``cfg.img_size``. Shift-scale-rotate and the distortions move the keypoints
    with the image; the resize scales them.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.size = cfg.img_size
        self.affine = ShiftScaleRotate.from_config(cfg)
        self.blur_or_noise = blur_or_noise(cfg.blur_p)
        self.distortion = distortion(cfg.distort_p)

    def forward(self, images: torch.Tensor, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with in_float32(images.device):
            images = brightness_contrast(images.float())
            images, keypoints = self.affine(images, keypoints.float())
            images, keypoints = self.distortion(self.blur_or_noise(images), keypoints)
            h, w = images.shape[-2:]
            scale = on_device([self.size / w, self.size / h], keypoints)
            return resize(images, self.size), keypoints * scale


class Stage2Augment(nn.Module):
    """Stage-2 training augmentation of stacked level crops (B, 5 * F, 256, 256) -> (B, 5 * F, S, S).

    Vertical flip (p = 0.5, if ``cfg.vflip``), brightness/contrast, shift-scale-rotate, one of blur/noise
    (p = 0.5), one of optical/grid distortion (p = 0.5), single-pixel coarse dropout (p = 0.5, if
    ``cfg.coarse_dropout``) at full resolution, then the resize to ``cfg.img_size``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.size = cfg.img_size
        self.coarse_dropout = cfg.coarse_dropout
        self.vflip = OneOf([VerticalFlip()], p=0.5) if cfg.vflip else nn.Identity()
        self.affine = ShiftScaleRotate.from_config(cfg)
        self.blur_or_noise = blur_or_noise(cfg.blur_p)
        self.distortion = distortion(cfg.distort_p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with in_float32(images.device):
            images = brightness_contrast(self.vflip(images.float()))
            images = self.distortion(self.blur_or_noise(self.affine(images)))
            if self.coarse_dropout:
                images = coarse_dropout(images)
            return resize(images, self.size)
