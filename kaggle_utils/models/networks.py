"""Networks of both stages: a timm backbone per frame, attention pooling over frames, small linear heads.

Stage 1 localises the 10 disc keypoints of a sagittal series from its middle slices, with one of two heads:
``KeypointNet`` (the solution's) pools each frame's features to a vector, pools the frames by attention and
regresses the points with 20 sigmoids; ``HeatmapKeypointNet`` keeps the feature maps, pools the frames by attention
at every location, predicts one heatmap per point and reads the point off it by soft-argmax.
Stage 2 (``SagittalNet``) treats each of the 5 level crops of a study as an independent frame sequence,
pools it with an attention-LSTM per condition family and classifies the severity of each condition row.
During training it mixes sequences (cutmix in embedding space) and pooled embeddings (manifold mixup),
and returns the targets mixed the same way. ``AxialNet`` does the same for the three crops of one axial level: the
canal crop gives the spinal row, the two recess crops (the right one mirrored) the subarticular rows, one head for
both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.core.config import Stage2Config, TrainConfig
from kaggle_utils.core.constants import IGNORE_INDEX, SEVERITIES, condition_family
from kaggle_utils.core.labels import condition_rows, head_groups, is_sided, left_right_pairs_of
from kaggle_utils.core.views import view_named

N_CLASSES = len(SEVERITIES)


def create_backbone(cfg: TrainConfig, **timm_kwargs: Any) -> nn.Module:
    """A 1-channel timm feature extractor (pooled features, no classifier); width = ``model.num_features``.
    ``timm_kwargs`` go to ``timm.create_model`` (``features_only=True`` for feature maps)."""
    kwargs: dict = dict(in_chans=1, num_classes=0, **timm_kwargs)
    if cfg.drop_path_rate > 0:  # not every timm family takes the argument; zero means "leave it out"
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.weights_file:  # Kaggle kernels have no hub access: pretrained weights come from a local file
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=cfg.weights_file))
    else:
        kwargs["pretrained"] = cfg.pretrained
    model = timm.create_model(cfg.backbone, **kwargs)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


class Attention(nn.Module):
    """Attention pooling over frames: tanh-scored softmax weights, masked frames get none.

    The last scoring layer has no bias: it would add one constant to every frame's score, which the softmax
    cancels, so its gradient is zero up to rounding and the optimizer could only make it drift (by lr-sized
    steps of random sign, different on every machine). Checkpoints that still hold it load without it.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.pop(f"{prefix}score.2.bias", None)  # a softmax-invariant constant of older checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def frame_weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax weights (B, F) of features ``x`` (B, F, E) with ``mask`` (B, F) True on valid frames."""
        scores = self.score(x).squeeze(-1).float()
        # The most negative finite value rather than -inf: an all-masked row gives uniform weights, not NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.frame_weights(x, mask).unsqueeze(-1) * x).sum(dim=1)


class AttentionLSTM(nn.Module):
    """Bidirectional LSTM over frames, mish+sigmoid+tanh, LayerNorm, then attention pooling.

    ``dim`` must be even: each direction has ``dim // 2`` units so the output keeps the width.
    Masked frames enter the LSTM as zero vectors (``zero_masked=True``), so their content cannot reach the
    output. The solution feeds the backbone features of its black padding frames instead, which is also a
    constant; ``zero_masked=False`` restores that behaviour exactly.
    """

    def __init__(self, dim: int, zero_masked: bool = True) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"AttentionLSTM needs an even feature width, got {dim}")
        self.zero_masked = zero_masked
        self.lstm = nn.LSTM(dim, dim // 2, num_layers=1, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(dim)
        self.attention = Attention(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.zero_masked:
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        h, _ = self.lstm(x)
        h = self.norm(F.mish(h) + torch.sigmoid(h) + torch.tanh(h))
        return self.attention(h, mask)


class KeypointNet(nn.Module):
    """Stage 1: frames (B, F, 1, H, W) and mask (B, F) -> the view's relative (x, y) points (B, P, 2) in [0, 1]
    (a sagittal series: 10, 2 per level, the smaller-x point first, the dataset's target order; an axial level: the
    left and right subarticular points).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.backbone = create_backbone(cfg)
        dim = self.backbone.num_features
        self.dropout = nn.Dropout(cfg.fc_dropout)
        self.attention = Attention(dim)
        self.n_points = view_named(cfg.view).keypoints.count
        self.fc = nn.Linear(dim, 2 * self.n_points)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[:2]
        features = self.dropout(self.backbone(x.flatten(0, 1)).view(b, f, -1))
        return torch.sigmoid(self.fc(self.attention(features, mask))).view(b, self.n_points, 2)


class FrameAttention2d(nn.Module):
    """Attention pooling over frames at every location of a feature map: (B, F, C, H, W) -> (B, C, H, W).

    ``Attention`` with 1x1 convolutions: each location scores its frames and takes their softmax-weighted mean,
    so a point may be read from the slice that shows it best. Masked frames get no weight.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Tanh(), nn.Conv2d(dim, 1, 1, bias=False))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[:2]
        scores = self.score(x.flatten(0, 1)).view(b, f, *x.shape[-2:]).float()
        scores = scores.masked_fill(~mask[:, :, None, None], torch.finfo(scores.dtype).min)
        return (scores.softmax(dim=1).to(x.dtype).unsqueeze(2) * x).sum(dim=1)


def soft_argmax(logits: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Heatmap logits (..., h, w) -> relative (x, y) (..., 2): the mean position under their softmax.

    A heatmap cell stands for the ``stride`` x ``stride`` input pixels it covers, its centre at pixel index
    ``j * stride + (stride - 1) / 2``; relative x is that index over the input width ``w * stride``, the
    convention of the keypoint targets and the warps (a point at relative x is at pixel index ``x * size``).
    """
    h, w = logits.shape[-2:]
    probs = logits.float().flatten(-2).softmax(dim=-1).view(*logits.shape[:-2], h, w)

    def centres(n: int) -> torch.Tensor:
        return (torch.arange(n, device=logits.device, dtype=probs.dtype) * stride + (stride - 1) / 2) / (n * stride)

    return torch.stack([(probs.sum(dim=-2) * centres(w)).sum(dim=-1), (probs.sum(dim=-1) * centres(h)).sum(dim=-1)], -1)


HEAD_GROUPS = 8
"""Channel groups of the heatmap head's norm (``decoder_dim`` must be a multiple)."""


class HeatmapKeypointNet(nn.Module):
    """Stage 1, spatial: frames (B, F, 1, H, W) and mask (B, F) -> (B, 10, 2) relative points, as ``KeypointNet``.

    The backbone's feature maps (``features_only``) at strides ``cfg.heatmap_stride`` and coarser are projected to
    ``cfg.decoder_dim`` channels and pooled over frames by ``FrameAttention2d``, each scale by its own; a top-down
    path (upsample and add, as a feature pyramid) brings the deep features, which know which disc is which, to the
    finest map, where a small head predicts one heatmap per point. ``forward(..., return_heatmaps=True)`` also
    returns the heatmap logits (B, 10, h, w) for the heatmap term of the loss.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.backbone = create_backbone(cfg, features_only=True)
        reductions = self.backbone.feature_info.reduction()
        if cfg.heatmap_stride not in reductions:
            raise ValueError(
                f"{cfg.backbone} has feature maps at strides {reductions}, not at heatmap_stride={cfg.heatmap_stride}"
            )
        # The finer maps are computed on the way anyway; the decoder starts at the heatmap's stride.
        self.first = reductions.index(cfg.heatmap_stride)
        self.stride = cfg.heatmap_stride
        channels = self.backbone.feature_info.channels()[self.first :]
        dim = cfg.decoder_dim
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.pools = nn.ModuleList(FrameAttention2d(dim) for _ in channels)
        self.dropout = nn.Dropout2d(cfg.fc_dropout)
        # Group norm, not batch norm: a series' heatmaps do not depend on its batch (small batches; DDP shards).
        self.head = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.GroupNorm(HEAD_GROUPS, dim),
            nn.ReLU(inplace=True),
            # one map per point of the view; a bias would add a constant the softmax cancels (Attention)
            nn.Conv2d(dim, view_named(cfg.view).keypoints.count, 1, bias=False),
        )

    def heatmaps(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Heatmap logits (B, 10, H / stride, W / stride)."""
        b, f = x.shape[:2]
        pooled = [
            pool(lateral(features).view(b, f, -1, *features.shape[-2:]), mask)
            for features, lateral, pool in zip(
                self.backbone(x.flatten(0, 1))[self.first :], self.lateral, self.pools, strict=True
            )
        ]
        fused = pooled[-1]
        for finer in reversed(pooled[:-1]):
            fused = finer + F.interpolate(fused, size=finer.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.dropout(fused))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, return_heatmaps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.heatmaps(x, mask)
        points = soft_argmax(logits, self.stride)
        return (points, logits) if return_heatmaps else points


def sequence_cutmix(
    emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, right_rows: torch.Tensor, p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cutmix of frame sequences: chosen rows take frames ``[F // 2:]`` (and their mask) from a partner.

    ``emb`` (N, F, E), ``mask`` (N, F), ``target`` (N, R, 3), ``right_rows`` (R,) bool. Each row is chosen
    with probability ``p``; partners come from one random permutation of all N rows (any study, any level,
    possibly the row itself). The first half of the sequence stays tied to the left labels: a chosen row
    keeps its own left and unsided rows and takes the partner's right rows.
    Returns the mixed (emb, mask, target) and ``partner`` (N,), the row each output's second half came from.
    """
    n, f = mask.shape
    chosen = torch.rand(n, device=emb.device) < p
    perm = torch.randperm(n, device=emb.device)
    partner = torch.where(chosen, perm, torch.arange(n, device=emb.device))
    second_half = torch.arange(f, device=emb.device) >= f // 2
    take = chosen[:, None] & second_half[None, :]  # (N, F)
    emb = torch.where(take.unsqueeze(-1), emb[perm], emb)
    mask = torch.where(take, mask[perm], mask)
    take_rows = chosen[:, None] & right_rows.to(emb.device)[None, :]  # (N, R)
    target = torch.where(take_rows.unsqueeze(-1), target[perm], target)
    return emb, mask, target, partner


def manifold_mixup(
    pooled: Sequence[torch.Tensor], target: torch.Tensor, p: float, alpha: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Mixup of pooled embeddings with the previous row (roll by 1), the same gamma and rows for every head.

    ``pooled``: per head (N, E); ``target`` (N, R, 3). A row is mixed with probability ``p`` when neither it
    nor its partner has an ignored label; one gamma ~ Beta(alpha, alpha) per batch weights the row itself.
    """
    labelled = (target != IGNORE_INDEX).flatten(1).all(dim=1)
    mixed = labelled & labelled.roll(1, 0) & (torch.rand(target.shape[0], device=target.device) < p)
    gamma = float(torch.distributions.Beta(alpha, alpha).sample())

    def mix(x: torch.Tensor) -> torch.Tensor:
        rows = mixed.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(rows, gamma * x + (1 - gamma) * x.roll(1, 0), x)

    return [mix(x) for x in pooled], mix(target)


def side_halves(
    emb: torch.Tensor, mask: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The (embedding, mask) of the left and right halves of frame sequences (N, F, E) and (N, F), each lateral
    first: frames ``[:F // 2]`` and frames ``[F // 2:]`` reversed, the halves of ``sequence_cutmix``. An odd middle
    frame is the right half's, as there; the left half then ends in a masked frame, so both have one length."""
    half = emb.shape[1] // 2
    right = emb[:, half:].flip(1), mask[:, half:].flip(1)
    extra = right[0].shape[1] - half
    left = (
        torch.cat([emb[:, :half], emb.new_zeros(emb.shape[0], extra, emb.shape[2])], dim=1),
        torch.cat([mask[:, :half], mask.new_zeros(mask.shape[0], extra)], dim=1),
    )
    return left, right


class SagittalNet(nn.Module):
    """Stage 2: level crop sequences (B, 5, F, 1, S, S) with mask (B, F) -> logits (B, 5, R, 3).

    One head per condition family of ``cfg.condition``: "foraminal" (T1) has one head with rows
    [left, right]; "all" (T2) has spinal [spinal], foraminal [left, right] and subarticular [left, right].
    Each head has its own AttentionLSTM and linear layer; the backbone and one dropout are shared. The
    levels are independent sequences sharing all weights. The spinal head sees the un-mixed sequence.
    With ``cfg.side_halves`` a left/right head reads each side from its own half of the slices (``side_halves``),
    both halves through its one pool and a 3-class linear layer, so either side's labels teach both.

    ``forward`` returns ``dict(logits=(B, 5, R, 3), target=(B, 5, R, K) or None)``; in training mode with a
    target, sequence cutmix and manifold mixup change the target accordingly. The target's last axis may hold
    several 3-class blocks side by side (K = 6: labels then pseudo labels), which then mix exactly alike; a row is
    eligible for mixup only when none of its blocks is ignored.
    """

    def __init__(self, cfg: Stage2Config) -> None:
        super().__init__()
        self.rows = condition_rows(cfg.condition)
        self.groups = head_groups(cfg.condition)
        self.cutmix_p, self.mixup_p, self.mixup_alpha = cfg.cutmix_p, cfg.mixup_p, cfg.mixup_alpha
        self.register_buffer("right_rows", torch.tensor([r.startswith("right_") for r in self.rows]), persistent=False)
        self.backbone = create_backbone(cfg)
        dim = self.backbone.num_features
        self.dropout = nn.Dropout(cfg.fc_dropout)
        self.families = tuple(condition_family(group[0]) for group in self.groups)
        self.pools = nn.ModuleDict({family: AttentionLSTM(dim, cfg.lstm_zero_masked) for family in self.families})
        self.halved = frozenset(
            family
            for family, group in zip(self.families, self.groups, strict=True)
            if cfg.side_halves and left_right_pairs_of(group) == ((0, 1),)  # rows [left, right] of one condition
        )
        self.fcs = nn.ModuleDict(
            {
                family: nn.Linear(dim, N_CLASSES * (1 if family in self.halved else len(group)))
                for family, group in zip(self.families, self.groups, strict=True)
            }
        )

    @property
    def left_right_pairs(self) -> tuple[tuple[int, int], ...]:
        return left_right_pairs_of(self.rows)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        b, n_levels, f = x.shape[:3]
        emb = self.dropout(self.backbone(x.flatten(0, 2)).view(b * n_levels, f, -1))
        mask = mask.repeat_interleave(n_levels, dim=0)  # study-major, level-minor like emb
        rows = target.flatten(0, 1) if target is not None else None
        mixing = self.training and rows is not None
        mixed_emb, mixed_mask = emb, mask
        if mixing and self.cutmix_p > 0:
            mixed_emb, mixed_mask, rows, _ = sequence_cutmix(emb, mask, rows, self.right_rows, self.cutmix_p)
        pooled = [
            self._pool(family, group, emb, mask, mixed_emb, mixed_mask)
            for family, group in zip(self.families, self.groups, strict=True)
        ]
        if mixing and self.mixup_p > 0:
            pooled, rows = manifold_mixup(pooled, rows, self.mixup_p, self.mixup_alpha)
        logits = torch.cat(
            [
                self.fcs[family](self.dropout(p)).view(-1, len(group), N_CLASSES)
                for family, group, p in zip(self.families, self.groups, pooled, strict=True)
            ],
            dim=1,
        )
        shape = (b, n_levels, len(self.rows), N_CLASSES)
        return dict(logits=logits.view(shape), target=rows.view(*shape[:-1], -1) if rows is not None else None)

    def _pool(
        self,
        family: str,
        group: Sequence[str],
        emb: torch.Tensor,
        mask: torch.Tensor,
        mixed_emb: torch.Tensor,
        mixed_mask: torch.Tensor,
    ) -> torch.Tensor:
        """A family's pooled embedding: (N, E), or (N, 2, E) for a family read by side halves. Sided families see
        the cutmixed sequence (whose halves carry their sides' labels); the spinal one the sequence as it was."""
        if not any(map(is_sided, group)):
            return self.pools[family](emb, mask)
        if family not in self.halved:
            return self.pools[family](mixed_emb, mixed_mask)
        left, right = side_halves(mixed_emb, mixed_mask)
        pooled = self.pools[family](torch.cat([left[0], right[0]]), torch.cat([left[1], right[1]]))
        return torch.stack(pooled.chunk(2), dim=1)


class AxialNet(nn.Module):
    """Stage 2, axial: a level's crops (B, 3, F, 1, S, S) (canal, left recess, mirrored right recess; F slices of
    its stack) with mask (B, F) -> logits (B, 1, 3, 3): the rows spinal, left and right subarticular of the level.

    Every crop's slices go through the shared backbone; the canal sequence is pooled by the spinal AttentionLSTM,
    each recess sequence by the subarticular one, whose linear layer serves both sides (the right crop is mirrored
    onto the left one's side when cut). ``forward`` returns ``SagittalNet``'s dict; in training with a target,
    manifold mixup mixes whole levels (the sequences of different crops are not cut and mixed: they differ in kind).
    """

    def __init__(self, cfg: Stage2Config) -> None:
        super().__init__()
        self.rows = condition_rows(cfg.condition)
        self.mixup_p, self.mixup_alpha = cfg.mixup_p, cfg.mixup_alpha
        self.backbone = create_backbone(cfg)
        dim = self.backbone.num_features
        self.dropout = nn.Dropout(cfg.fc_dropout)
        self.pools = nn.ModuleDict({f: AttentionLSTM(dim, cfg.lstm_zero_masked) for f in ("spinal", "subarticular")})
        self.fcs = nn.ModuleDict({f: nn.Linear(dim, N_CLASSES) for f in ("spinal", "subarticular")})

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        b, n_crops, f = x.shape[:3]
        emb = self.dropout(self.backbone(x.flatten(0, 2)).view(b, n_crops, f, -1))
        canal = self.pools["spinal"](emb[:, 0], mask)
        recesses = self.pools["subarticular"](emb[:, 1:].flatten(0, 1), mask.repeat_interleave(n_crops - 1, dim=0))
        pooled = [canal, recesses.view(b, -1)]  # (B, E) and (B, 2E): a level's sides mix together
        rows = target.flatten(1, 2) if target is not None else None  # (B, 3, K)
        if self.training and rows is not None and self.mixup_p > 0:
            pooled, rows = manifold_mixup(pooled, rows, self.mixup_p, self.mixup_alpha)
        canal, recesses = pooled[0], pooled[1].view(b * (n_crops - 1), -1)
        logits = torch.cat(
            [
                self.fcs["spinal"](self.dropout(canal)).view(b, 1, N_CLASSES),
                self.fcs["subarticular"](self.dropout(recesses)).view(b, n_crops - 1, N_CLASSES),
            ],
            dim=1,
        )
        shape = (b, 1, len(self.rows), N_CLASSES)
        return dict(logits=logits.view(shape), target=rows.view(*shape[:-1], -1) if rows is not None else None)


MODELS: dict[str, type[nn.Module]] = {
    "keypoint": KeypointNet,
    "keypoint_heatmap": HeatmapKeypointNet,
    "sagittal_1head": SagittalNet,
    "sagittal_3heads": SagittalNet,
    "axial_crops": AxialNet,
}
"""Model classes by the ``model`` name of a config."""

MODEL_CONDITIONS = {"sagittal_1head": "foraminal", "sagittal_3heads": "all", "axial_crops": "axial"}
"""The condition each stage-2 model name is for: its heads follow from the condition's rows."""


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a config names."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; valid names: {', '.join(MODELS)}")
    expected = MODEL_CONDITIONS.get(cfg.model)
    if expected is not None and cfg.condition != expected:
        raise ValueError(f"model {cfg.model!r} is for condition {expected!r}, but the config has {cfg.condition!r}")
    return MODELS[cfg.model](cfg)
