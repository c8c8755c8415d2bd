"""Batch augmentation on the GPU (or CPU) in tensor ops, and the stage-2 rotation TTA (kornia).

Frames are channels: a batch is (B, C, H, W) float in [0, 1], C = frames (stage 1) or 5 levels x frames
(stage 2). Every op draws its random parameters per sample and applies them to all channels, which is
what the solution gets by calling albumentations once on the (H, W, C) stack of a sample.

Each op is a few tensor lines, closer to albumentations than kornia's ops and faster: brightness/contrast (one
multiply-add and a single clip), shift-scale-rotate, optical and grid distortion (one ``grid_sample`` each, and
the forward map for stage-1 keypoints), Gaussian noise (variance range), the 3x3 blurs (motion blur's
random-line kernel, cv2's fixed Gaussian kernel, an exact median), vertical flip, single-pixel coarse dropout
and the resize.

**Nothing here waits for the GPU.** Random parameters are drawn on the device, which samples take an optional
op is drawn on the host, and host numbers reach the device through pinned memory (``on_device``). A plain copy
from host memory, or reading a device value, would make the host wait until all queued work is done, so it
could not queue the augmentation while the GPU still runs the previous step's backward pass; kornia's random
augmentations do both (their parameters are drawn on the host and copied over).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import cv2
import kornia.geometry.transform as KT
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.config import TrainConfig

BRIGHTNESS_LIMIT = 0.4  # additive, in [0, 1] units (albumentations brightness_by_max on uint8)
CONTRAST_LIMIT = 0.25  # multiplicative
NOISE_VAR_RANGE = (3.0, 9.0)  # GaussNoise variance on the 0-255 scale
DISTORT_LIMIT = 1.0
GRID_STEPS = 5
DROPOUT_HOLES = (50, 250)  # single-pixel holes per sample, inclusive
RESIZE_MODE = "bicubic"
# Training (LANCZOS4) and TTA (bicubic) resizes of the solution both go through cv2 without antialiasing;
# one shared non-antialiased bicubic keeps train and test images alike.


@contextlib.contextmanager
def _float32(device: torch.device) -> Iterator[None]:
    """Run augmentations in float32 even inside an autocast region (interpolation and clamps need it)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def on_device(values: object, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host numbers as a tensor on ``like``'s device (its dtype unless given), without waiting for that device.

    A copy from ordinary host memory waits for every kernel already queued; from pinned memory it is queued
    like a kernel (the pinned buffer is kept until the copy has run).
    """
    host = torch.as_tensor(values, dtype=dtype or like.dtype)
    if like.device.type != "cuda":
        return host.to(like.device)
    return host.pin_memory().to(like.device, non_blocking=True)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) resized to (size, size) with clipped bicubic interpolation; unchanged if already so."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=RESIZE_MODE, align_corners=False).clamp_(0.0, 1.0)


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) uniform draws on the device of ``like``, broadcastable over (C, H, W)."""
    return torch.empty(n, 1, 1, 1, device=like.device).uniform_(low, high)


def brightness_contrast(images: torch.Tensor) -> torch.Tensor:
    """albumentations RandomBrightnessContrast(0.4, 0.25) on [0, 1] images: ``x * alpha + beta``, one clip."""
    b = images.shape[0]
    alpha = _uniform(b, 1 - CONTRAST_LIMIT, 1 + CONTRAST_LIMIT, images)
    beta = _uniform(b, -BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT, images)
    return (images * alpha + beta).clamp_(0.0, 1.0)


class GaussianNoise(nn.Module):
    """Additive per-pixel Gaussian noise whose variance is drawn per sample from ``NOISE_VAR_RANGE`` / 255**2."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        std = _uniform(images.shape[0], *NOISE_VAR_RANGE, images).sqrt_() / 255.0
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


def _remap(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # Reflection with align_corners=True is cv2's BORDER_REFLECT_101, the albumentations default.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _identity_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, H, W, 2) sampling grid in normalised (x, y) coordinates."""
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device), indexing="ij"
    )
    return torch.stack([x, y], dim=-1).unsqueeze(0)


def _normalised(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel (x, y) -> ``grid_sample`` coordinates with ``align_corners=True`` (pixel centres 0 and n - 1 at -1, 1)."""
    return points * on_device([2 / (w - 1), 2 / (h - 1)], points) - 1


def _pixels(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return (points + 1) * on_device([(w - 1) / 2, (h - 1) / 2], points)


class Distortion(nn.Module, ABC):
    """A random warp (shift-scale-rotate, optical or grid distortion) given by a sampling grid: ``draw`` its
    parameters per sample, ``grid`` maps output pixels to source positions, ``move`` maps source keypoints to their
    output positions (the inverse of ``grid``).

    ``forward(images)`` warps images; ``forward(images, points)`` also moves pixel keypoints (B, K, 2) in (x, y),
    so that they stay on what they marked.
    """

    @abstractmethod
    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """Random parameters of ``b`` warps."""

    @abstractmethod
    def grid(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H, W, 2) normalised source (x, y) of every output pixel."""

    @abstractmethod
    def move(self, params: torch.Tensor, points: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Normalised source positions (B, K, 2) in an (h, w) image -> their normalised output positions."""

    def forward(
        self, images: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.warp(images, self.draw(images.shape[0], images.device), points)

    def warp(
        self, images: torch.Tensor, params: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with the given parameters."""
        h, w = images.shape[-2:]
        warped = _remap(images, self.grid(params, h, w))
        if points is None:
            return warped
        return warped, _pixels(self.move(params, _normalised(points, h, w), h, w), h, w)


class OpticalDistortion(Distortion):
    """Radial barrel/pincushion distortion, pixel for pixel as albumentations 1.4.11 OpticalDistortion(limit).

    albumentations asks cv2.initUndistortRectifyMap for k1 = k2 = k ~ U(-limit, limit), focal length = image size
    and the principal point at (W / 2, H / 2); cv2 centres the output grid at ((W - 1) / 2, (H - 1) / 2) instead.
    So an output pixel at offset d from that centre samples the source at ``centre + 0.5 + d (1 + k r^2 + k r^4)``,
    r = |d / size|: the warp also shifts the image by half a pixel towards the top left.
    """

    def __init__(self, limit: float = DISTORT_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        return torch.empty(b, device=device).uniform_(-self.limit, self.limit)

    @staticmethod
    def _geometry(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per axis (x, y): normalised offset -> cv2's radius units (offset / size), and cv2's half-pixel shift
        in normalised units."""
        to_radius = on_device([(w - 1) / (2 * w), (h - 1) / (2 * h)], like)
        return to_radius, on_device([1 / (w - 1), 1 / (h - 1)], like)

    @staticmethod
    def _stretch(k: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return 1 + k * r2 + k * r2.square()

    def grid(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        grid = _identity_grid(h, w, params.device)
        to_radius, shift = self._geometry(h, w, grid)
        r2 = (grid * to_radius).square().sum(dim=-1, keepdim=True)
        return grid * self._stretch(params.view(-1, 1, 1, 1), r2) + shift

    def move(self, params: torch.Tensor, points: torch.Tensor, h: int, w: int, iterations: int = 30) -> torch.Tensor:
        """Undo the shift, then solve ``r (1 + k r^2 + k r^4) = R`` for the output radius r of a source point at
        radius R by bisection, and scale the point along its ray by r / R.

        The source radius grows with r up to a fold (only for k < 0; beyond it the map turns back). The root
        lies in [0, R] for k >= 0 and in [R, fold] for k < 0; a point beyond the fold's source radius is not
        visible in the output and is pushed past the fold in proportion.
        """
        to_radius, shift = self._geometry(h, w, points)
        offset = points - shift
        k = params.view(-1, 1)
        target = (offset * to_radius).norm(dim=-1)  # R, (B, K)

        def source_radius(r: torch.Tensor) -> torch.Tensor:
            return r * self._stretch(k, r.square())

        # The fold: the positive root u = r^2 of d(source radius)/dr = 1 + 3k u + 5k u^2 (k < 0).
        a, b = 5 * k, 3 * k
        fold_u = (-b - (b.square() - 4 * a).clamp(min=0).sqrt()) / (2 * a).clamp(max=-1e-12)
        high = torch.where(k < 0, fold_u.sqrt().expand_as(target), target)
        low = torch.zeros_like(target)
        for _ in range(iterations):
            mid = (low + high) / 2
            below = source_radius(mid) < target
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        r = (low + high) / 2
        reach = source_radius(r)
        r = torch.where(reach < target - 1e-6, r * target / reach.clamp(min=1e-12), r)
        scale = torch.where(target > 0, r / target.clamp(min=1e-12), torch.ones_like(r))
        return offset * scale.unsqueeze(-1)


class GridDistortion(Distortion):
    """Separable grid distortion, pixel for pixel as albumentations 1.4.11 GridDistortion(num_steps, distort_limit).

    Each axis of n pixels is cut into ``steps`` cells of ``n // steps`` output pixels and a remainder. Cell i shows
    the source from where cell i - 1 ended, stretched by ``1 + U(-limit, limit)`` times the cell's width (its
    first and last pixel on the ends, as ``np.linspace`` spaces them); the remainder shows the source from there to
    n. The stretches are not rescaled (albumentations' default ``normalized=False``): wide ones on the whole show
    the reflected border past the right and bottom edges, narrow ones leave the source's far side out. Along each
    axis the map increases (but for a remainder of several pixels after cells that reached past n: it runs back
    to n), so moving a keypoint is the same interpolation the other way.
    """

    def __init__(self, steps: int = GRID_STEPS, limit: float = DISTORT_LIMIT) -> None:
        super().__init__()
        self.steps, self.limit = steps, limit

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """(B, 2, steps) stretches of the cells of the x and y axes."""
        return 1 + torch.empty(b, 2, self.steps, device=device).uniform_(-self.limit, self.limit)

    def _cells(self, stretch: torch.Tensor, n: int) -> tuple[int, int, torch.Tensor]:
        """Cell width and remainder in pixels, and (B, steps + 1) source pixels where each cell and the remainder
        begin (the remainder ends at n)."""
        width = n // self.steps
        return width, n - width * self.steps, F.pad((width * stretch).cumsum(dim=-1), (1, 0))

    def _axis(self, stretch: torch.Tensor, n: int) -> torch.Tensor:
        """(B, n) normalised source coordinates of the n output pixels along one axis."""
        width, rest, starts = self._cells(stretch, n)
        ends = torch.cat([starts[:, 1:], starts.new_full((len(starts), 1), float(n))], dim=1)
        pixel = torch.arange(n, device=stretch.device)
        cell = (pixel // width).clamp_(max=self.steps)  # index steps: the remainder
        along = (pixel - cell * width).float()
        pixels_in_cell = torch.where(cell < self.steps, width, rest)
        start, end = starts[:, cell], ends[:, cell]
        source = start + along / (pixels_in_cell - 1).clamp(min=1) * (end - start)
        return source * 2 / (n - 1) - 1

    def grid(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b = params.shape[0]
        x = self._axis(params[:, 0], w)[:, None, :].expand(b, h, w)
        y = self._axis(params[:, 1], h)[:, :, None].expand(b, h, w)
        return torch.stack([x, y], dim=-1)

    def move(self, params: torch.Tensor, points: torch.Tensor, h: int, w: int) -> torch.Tensor:
        moved = []
        for axis, n in enumerate((w, h)):
            width, rest, starts = self._cells(params[:, axis], n)
            source = ((points[..., axis] + 1) * (n - 1) / 2).contiguous()  # (B, K) pixels
            # the cell whose source span holds the point
            cell = (torch.searchsorted(starts.contiguous(), source, right=True) - 1).clamp_(0, self.steps - 1)
            start, stop = starts.gather(1, cell), starts.gather(1, cell + 1)
            span = (stop - start).clamp(min=1e-6)  # a cell whose stretch drew exactly 0 shows no source
            out = cell * width + (source - start) / span * (width - 1)
            last = starts[:, -1:]
            reach = last  # the farthest source the output shows
            if rest > 1:  # the remainder shows the source from ``last`` to n; forward only when last < n
                forward = last < n
                in_rest = self.steps * width + (source - last) / (n - last).clamp(min=1e-6) * (rest - 1)
                out = torch.where(forward & (source >= last), in_rest, out)
                reach = torch.where(forward, torch.full_like(last, float(n)), last)
            # a point the output does not show lands past its far edge, as far as it lies past what is shown
            out = torch.where(source > reach, (n - 1) + (source - reach), out)
            moved.append(out * 2 / (n - 1) - 1)
        return torch.stack(moved, dim=-1)


class ShiftScaleRotate(Distortion):
    """albumentations 1.4.11 ShiftScaleRotate(shift_limit, scale_limit, rotate_limit), linear, reflect-101, p = 1.

    That version builds it as an ``Affine`` with ``keep_ratio=False``: the x and y zooms are two draws from
    ``1 +- scale_limit``, the angle is drawn from ``+- rotate_limit`` degrees, the shift from ``+- shift_limit``
    of the width and of the height. A source pixel p goes to ``A (p - c) + c + t`` with A = rotation x zoom and
    c the centre ((W - 1) / 2, (H - 1) / 2), which is kornia's ``get_affine_matrix2d`` as its RandomAffine
    draws it; here the parameters are drawn on the device, so the op never waits for it.
    """

    def __init__(self, shift_limit: float, scale_limit: float, rotate_limit: float) -> None:
        super().__init__()
        self.shift_limit, self.scale_limit, self.rotate_limit = shift_limit, scale_limit, rotate_limit

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ShiftScaleRotate:
        return cls(cfg.shift_limit, cfg.scale_limit, cfg.rotate_limit)

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """(B, 5): angle in degrees, x zoom, y zoom, x shift and y shift as fractions of the width and height."""
        u = torch.empty(b, 5, device=device).uniform_(-1.0, 1.0)
        angle, zoom_x, zoom_y, shift_x, shift_y = u.unbind(dim=1)
        return torch.stack(
            [
                angle * self.rotate_limit,
                1 + zoom_x * self.scale_limit,
                1 + zoom_y * self.scale_limit,
                shift_x * self.shift_limit,
                shift_y * self.shift_limit,
            ],
            dim=1,
        )

    @staticmethod
    def normalised_matrix(params: torch.Tensor, h: int, w: int, inverse: bool = False) -> torch.Tensor:
        """(B, 2, 3) map of ``grid_sample`` coordinates (align_corners=True): source -> output, or its inverse.

        With D = diag((W - 1) / 2, (H - 1) / 2), pixel offsets from the centre are D times normalised
        coordinates, so the map is ``D^-1 A D n + D^-1 t`` and its inverse ``D^-1 A^-1 D (n - D^-1 t)``.
        """
        radians = torch.deg2rad(params[:, 0])
        cos, sin = radians.cos(), radians.sin()
        zoom_x, zoom_y = params[:, 1], params[:, 2]
        half_w, half_h = (w - 1) / 2, (h - 1) / 2
        shift_x, shift_y = params[:, 3] * w / half_w, params[:, 4] * h / half_h
        if inverse:
            a, b = cos / zoom_x, sin / zoom_x * (half_h / half_w)
            c, d = -sin / zoom_y * (half_w / half_h), cos / zoom_y
            row_x = [a, b, -(a * shift_x + b * shift_y)]
            row_y = [c, d, -(c * shift_x + d * shift_y)]
        else:
            row_x = [cos * zoom_x, -sin * zoom_y * (half_h / half_w), shift_x]
            row_y = [sin * zoom_x * (half_w / half_h), cos * zoom_y, shift_y]
        return torch.stack(row_x + row_y, dim=1).view(-1, 2, 3)

    def grid(self, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
        theta = self.normalised_matrix(params, h, w, inverse=True)
        return F.affine_grid(theta, [len(params), 1, h, w], align_corners=True)

    def move(self, params: torch.Tensor, points: torch.Tensor, h: int, w: int) -> torch.Tensor:
        matrix = self.normalised_matrix(params, h, w)
        return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


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
        with _float32(images.device):
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
        with _float32(images.device):
            images = brightness_contrast(self.vflip(images.float()))
            images = self.distortion(self.blur_or_noise(self.affine(images)))
            if self.coarse_dropout:
                images = coarse_dropout(images)
            return resize(images, self.size)


def rotate_resize(images: torch.Tensor, angles: Sequence[float], size: int) -> torch.Tensor:
    """Deterministic rotation TTA: (B, C, H, W) -> (B * len(angles), C, size, size), sample-major.

    Each sample is rotated by every angle (degrees, counter-clockwise as cv2, about the centre, bilinear,
    reflect-101 border) and resized bicubically. The whole batch is rotated one angle at a time, so only
    one full-resolution copy exists at once (B x C x H x W floats, not len(angles) times that).
    """
    with _float32(images.device):
        images = images.float()
        views = [resize(_rotate(images, angle), size) for angle in angles]
        return torch.stack(views, dim=1).flatten(0, 1)


def _rotate(images: torch.Tensor, angle: float) -> torch.Tensor:
    if angle == 0:  # the plain view stays exact
        return images
    theta = torch.full((images.shape[0],), float(angle), device=images.device)
    return KT.rotate(images, theta, mode="bilinear", padding_mode="reflection", align_corners=True)
