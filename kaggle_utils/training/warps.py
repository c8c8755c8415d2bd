"""The geometric warps of the training augmentation, each one ``grid_sample`` of the batch with its parameters drawn
per sample on the device: shift-scale-rotate (x and y zoomed independently), optical distortion and grid distortion
as albumentations 1.4.11 draws and applies them, plus the forward map of each, so stage-1 keypoints move with the
image (albumentations leaves them in place under the two distortions)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.devices import on_device

DISTORT_LIMIT = 1.0


GRID_STEPS = 5


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
