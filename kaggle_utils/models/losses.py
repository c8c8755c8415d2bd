"""Training losses: the severity-weighted soft cross-entropy of stage 2; the L1 keypoint loss of stage 1 and the
heatmap term of its spatial head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kaggle_utils.core.constants import IGNORE_INDEX, SEVERITIES, SEVERITY_WEIGHTS


def weighted_soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Severity-weighted cross-entropy of 3-class rows with one-hot, soft (mixup) or ignored targets.

    ``logits`` and ``target`` have shape (..., 3) and are flattened to rows. A row's weight is
    ``SEVERITY_WEIGHTS`` of its dominant target class (ties go to the lower index, so a 50/50 mix of
    Normal and Severe weighs 1); rows whose first entry is ``IGNORE_INDEX`` weigh 0. The per-row loss is
    ``-sum(target * log_softmax(logits))``. As in the solution, the weighted sum is divided by the number of
    rows **including** ignored ones, not by the sum of weights, so the loss scale follows the label-missing
    rate.
    """
    n_classes = len(SEVERITIES)
    logits = logits.reshape(-1, n_classes).float()
    target = target.reshape(-1, n_classes).float()
    ignored = target[:, 0] == IGNORE_INDEX
    # Zero the ignored rows instead of multiplying -100 by a log-probability, which could give inf * 0 = NaN.
    target = target.masked_fill(ignored.unsqueeze(1), 0.0)
    # The solution takes the argmax after setting zeros to -inf; targets are non-negative, so a plain argmax
    # (first maximum on ties) picks the same class.
    # Weights picked with scalars: a weight table copied to the GPU would wait for all queued work each step.
    dominant = target.argmax(dim=1)
    weights = sum((dominant == c) * w for c, w in enumerate(SEVERITY_WEIGHTS)).masked_fill(ignored, 0.0)
    # Zero-target entries contribute exactly 0 even where a log-probability is -inf.
    terms = torch.where(target > 0, target * F.log_softmax(logits, dim=1), 0.0)
    row_loss = -terms.sum(dim=1)
    return (weights * row_loss).sum() / max(len(row_loss), 1)


def pseudo_label_loss(
    logits: torch.Tensor, target: torch.Tensor, pseudo: torch.Tensor, pseudo_weight: float
) -> torch.Tensor:
    """``(1 - w) * loss(labels) + w * loss(pseudo labels)``, both ``weighted_soft_cross_entropy``: the solution's best
    submission used w = 0.5. Pseudo rows marked ``IGNORE_INDEX`` (no OOF prediction) weigh 0 like missing labels."""
    label_loss = weighted_soft_cross_entropy(logits, target)
    return (1.0 - pseudo_weight) * label_loss + pseudo_weight * weighted_soft_cross_entropy(logits, pseudo)


def keypoint_l1(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error between predicted and true relative keypoints (any shapes with equal size); with ``known``
    ((B, K) bool, the points as (B, K, 2)) only over the known points (0 when none is)."""
    if known is None:
        return F.l1_loss(pred.float(), target.reshape(pred.shape).float())
    error = (pred.float() - target.reshape(pred.shape).float()).abs().reshape(*known.shape, -1)
    weight = known.to(error.dtype).unsqueeze(-1).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp(min=1.0)


def gaussian_heatmaps(points: torch.Tensor, shape: tuple[int, int], stride: int, sigma: float) -> torch.Tensor:
    """Target heatmaps (..., h, w) of relative points (..., 2): a Gaussian of ``sigma`` cells at each point,
    normalised to sum to 1, on the cell grid of ``networks.soft_argmax`` (cell j centred at relative
    ``(j * stride + (stride - 1) / 2) / (w * stride)``)."""
    h, w = shape
    cell = points.float() * torch.tensor([w, h], device=points.device) - (stride - 1) / (2 * stride)
    xs = torch.arange(w, device=points.device, dtype=torch.float32)
    ys = torch.arange(h, device=points.device, dtype=torch.float32)
    gx = -((xs - cell[..., :1]) ** 2) / (2 * sigma**2)  # (..., w)
    gy = -((ys - cell[..., 1:]) ** 2) / (2 * sigma**2)  # (..., h)
    return (gy.unsqueeze(-1) + gx.unsqueeze(-2)).flatten(-2).softmax(-1).view(*points.shape[:-1], h, w)


def heatmap_divergence(
    logits: torch.Tensor, points: torch.Tensor, stride: int, sigma: float, known: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean KL divergence from the Gaussian target heatmaps of ``points`` (B, K, 2) to the softmax of the heatmap
    ``logits`` (B, K, h, w): it pulls the whole map to one peak at the point, which the L1 on the soft-argmax alone
    does not (a spread-out map can have the right mean). With ``known`` ((B, K) bool) only over the known points."""
    target = gaussian_heatmaps(points, logits.shape[-2:], stride, sigma).flatten(-2)
    log_probs = F.log_softmax(logits.float().flatten(-2), dim=-1)
    divergence = F.kl_div(log_probs, target, reduction="none").sum(-1)
    if known is None:
        return divergence.mean()
    weight = known.to(divergence.dtype)
    return (divergence * weight).sum() / weight.sum().clamp(min=1.0)
