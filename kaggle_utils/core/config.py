"""Configuration: a dataclass for each step (preprocessing, the two training stages, inference), every value checked
for its type and range when a config is made, and overrides applied by name. The named presets are in ``presets``,
a run's parameters in ``parameters``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from kaggle_utils.core.constants import CONDITION_FAMILIES, TTA_ANGLES
from kaggle_utils.core.views import view_named

ViewName = Literal["t1", "t2", "axial"]  # views.VIEWS: Sagittal T1, Sagittal T2/STIR, Axial T2
ModelName = Literal["keypoint", "keypoint_heatmap", "sagittal_1head", "sagittal_3heads", "axial_crops"]  # models.MODELS
STAGE1_MODELS: tuple[str, ...] = ("keypoint", "keypoint_heatmap")
"""The localisers: the solution's regression head, and the spatial (heatmap) head."""
Condition = Literal["all", "foraminal", "axial"]  # labels.CONDITION_ROWS: the rows a stage-2 model predicts
AmpDtype = Literal["auto", "bf16", "fp16"]
Routes = tuple[tuple[str, int], ...]
"""A stage-2 preset's routing: (condition family, rank) pairs. For each row of a family, the presets of the first
rank that predicted it give it, averaged; a family a preset does not list takes nothing from it."""


RENAMED: dict[str, str] = {"plane": "view"}
"""Names that earlier versions wrote (config fields in sidecars and weights files, columns of the hand-off tables)
-> the names they have now: what was saved before still loads."""


def renamed(values: dict[str, Any]) -> dict[str, Any]:
    """A saved dict (config fields) with the names of earlier versions (``RENAMED``) written as they are now."""
    return {RENAMED.get(key, key): value for key, value in values.items()}


class ConfigError(ValueError):
    """A configuration key or value that does not exist or does not fit."""


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The fields of a config class that name a choice (a ``Literal``), with the values allowed."""
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


def _label(cfg: Any) -> str:
    """How a message names a config: its class, and a training config's preset."""
    name = getattr(cfg, "name", "")
    return f"{type(cfg).__name__} {name}" if name else type(cfg).__name__


def check_choices(cfg: Any) -> None:
    """Raise a ``ConfigError`` naming the field, the value and the allowed ones when a choice does not exist."""
    for name, choices in _choices(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]}?" if near else ""
            allowed = ", ".join(map(str, choices))
            raise ConfigError(f"{_label(cfg)} {name}={value!r} is not one of {allowed}{hint}")


def _whole(low: int) -> tuple[Any, str]:
    return (lambda v: v >= low), f"a whole number >= {low}"


_SHARE = (lambda v: 0 <= v <= 1), "a share between 0 and 1"
_NON_NEGATIVE = (lambda v: v >= 0), "a number >= 0"
_POSITIVE = (lambda v: v > 0), "a number > 0"
_RULES: dict[str, tuple[Any, str]] = {
    **{name: _whole(1) for name in ("epochs", "batch_size", "n_frames", "img_size", "heatmap_stride", "decoder_dim")},
    **{name: _whole(1) for name in ("stage1_error_draws", "axial_stack_slices")},
    **{name: _whole(0) for name in ("num_workers", "eval_every")},
    "n_folds": _whole(2),
    **{name: _NON_NEGATIVE for name in ("lr_min", "weight_decay", "shift_limit", "scale_limit", "rotate_limit")},
    **{name: _POSITIVE for name in ("lr", "grad_clip", "heatmap_sigma", "axial_max_distance_mm", "mixup_alpha")},
    **{name: _POSITIVE for name in ("axial_canal_crop_mm", "axial_recess_crop_mm")},
    **{name: _POSITIVE for name in ("t1_width_mult", "t1_height_mult", "t2_width_mult", "t2_height_mult")},
    **{name: _SHARE for name in ("cutmix_p", "mixup_p", "blur_p", "distort_p", "stage1_error_p", "pseudo_weight")},
    **{name: _SHARE for name in ("drop_path_rate", "fc_dropout")},
    "tta_angles": ((lambda v: len(v) > 0), "at least one angle, e.g. [0]"),
    "percentiles": ((lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 100), "two percentiles, low < high, in 0-100"),
}
"""The range of each numeric config field that has one, and how a message says it."""


def _type_of(hint: Any) -> type | tuple[type, ...] | None:
    """The Python type a field's value must have (floats take ints too); None for a choice (``check_choices``)."""
    if typing.get_origin(hint) is Literal:
        return None
    hint = typing.get_origin(hint) or hint
    return (int, float) if hint is float else hint


def _number_or_pair(value: Any) -> bool:
    """An element of a tuple field: a number (angles, percentiles) or a pair (``routes``)."""
    return isinstance(value, tuple) or (isinstance(value, int | float) and not isinstance(value, bool))


def check_values(cfg: Any) -> None:
    """Raise a ``ConfigError`` naming the field when a value has the wrong type or lies out of its range
    (``_RULES``): a 0 for ``epochs`` or ``batch_size`` stops here, before any work."""
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value, wanted = getattr(cfg, field.name), _type_of(hints[field.name])
        if wanted is None:
            continue
        wrong_bool = isinstance(value, bool) and wanted is not bool
        if wrong_bool or not isinstance(value, wanted):
            name = " or ".join(t.__name__ for t in wanted) if isinstance(wanted, tuple) else wanted.__name__
            example = ", give a list such as [0]" if wanted is tuple else ""
            raise ConfigError(f"{_label(cfg)} {field.name}={value!r} is not of type {name}{example}")
        if isinstance(value, tuple) and any(
            isinstance(v, bool) or not isinstance(v, int | float | tuple) for v in value
        ):
            raise ConfigError(f"{_label(cfg)} {field.name}={value!r} holds something other than numbers")
        rule = _RULES.get(field.name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{_label(cfg)} {field.name}={value!r}: expected {rule[1]}")


@dataclass(frozen=True)
class PreprocessConfig:
    """Deterministic preprocessing (cached as uint8 arrays); the multipliers are the solution's crop geometry, but
    for the T1 crop's size."""

    img_size: int = 256
    percentiles: tuple[float, float] = (1.0, 99.0)
    t2_width_mult: float = 0.75  # half-width of a T2 crop, in median disc widths
    t2_offset_mult: float = 0.5  # shift of the T2 crop centre towards the front, in crop half-widths
    t2_height_mult: float = 1.3  # half-height of a T2 crop, in median level spacings
    t1_width_mult: float = 1.25  # half-width of a T1 crop, in its half-heights (relative to the width)
    # Half-height of a T1 crop, in median level spacings. The solution's 1.0 frames the foramina above and below as
    # well, at the crop's edges; half of it frames the level's own foramen, and a model learns the narrowing from
    # that (README, "Where it departs").
    t1_height_mult: float = 0.5
    n_folds: int = 4
    fold_seed: int = 42
    # The solution's metadata files, each a path or a bare name looked for in DATA_DIR and the attached datasets.
    keypoints_file: str = ""  # corrected keypoints; "" = coords_v7.csv or coords_rsna_improved.csv where found
    folds_file: str = ""  # the solution's metadata.csv, to train on its folds; "" = the project's own folds
    num_workers: int = 2
    # An axial slice images a level when the level's Sagittal T2 point is this close to its plane (training samples)
    axial_max_distance_mm: float = 3.0
    axial_stack_slices: int = 5  # an axial level's cached slices: the assigned one and its neighbours, from its block
    axial_canal_crop_mm: float = 60.0  # side of the crop around the midpoint of the two subarticular points
    axial_recess_crop_mm: float = 40.0  # side of the crop around each subarticular point: that side's lateral recess

    def __post_init__(self) -> None:
        check_values(self)


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by both stages."""

    name: str
    view: ViewName  # "t1" (Sagittal T1), "t2" (Sagittal T2/STIR) or "axial" (Axial T2)
    model: ModelName  # a localiser (STAGE1_MODELS) or a classifier: "sagittal_1head", "sagittal_3heads", "axial_crops"
    n_frames: int
    img_size: int
    epochs: int
    backbone: str = "hgnetv2_b5.ssld_stage2_ft_in1k"
    pretrained: bool = True
    weights_file: str = ""  # local pretrained backbone weights (.safetensors/.pth); Kaggle has no hub access
    init_checkpoint: str = ""  # start from all the weights of a finished checkpoint of ours (*.pt), to fine-tune
    drop_path_rate: float = 0.2
    fc_dropout: float = 0.05
    batch_size: int = 32
    lr: float = 1e-4
    lr_min: float = 1e-6
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    amp: bool = True  # mixed precision on a GPU (see amp_dtype); off on the CPU
    amp_dtype: AmpDtype = "auto"  # "auto" (bf16 where the card supports it, else fp16 + grad scaler), "bf16", "fp16"
    channels_last: bool = True
    grad_checkpointing: bool = False  # trades ~30 % speed for memory; a 16 GB card needs it at batch 32
    num_workers: int = 4  # threads that load batches (loader.BatchLoader); 0 loads them in the training thread
    seed: int = 42
    eval_every: int = 0  # evaluate every N optimizer steps; 0 = once per epoch
    resume: bool = True  # continue an interrupted run from its last finished epoch; skip folds already trained
    fast_dev_run: bool = False  # one batch of train and val, one epoch
    overfit_batch: bool = False  # train and validate on the same single batch
    augment: bool = True  # False: no training augmentation at all (no sequence flip either), for debugging
    # augmentation (the solution's strengths; the small profiles soften them to learn in CPU minutes)
    shift_limit: float = 0.15  # fraction of the image
    scale_limit: float = 0.25  # zoom of each axis in [1 - limit, 1 + limit], drawn independently
    rotate_limit: float = 30.0  # degrees
    blur_p: float = 0.5  # one of motion/median/gaussian blur or gaussian noise
    distort_p: float = 0.5  # one of optical/grid distortion
    vflip: bool = False
    coarse_dropout: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        check_values(self)

    @property
    def stage(self) -> int:
        return 1 if self.model in STAGE1_MODELS else 2

    @property
    def series_description(self) -> str:
        return view_named(self.view).description


@dataclass(frozen=True)
class Stage1Config(TrainConfig):
    """Keypoint localiser: middle frames of a sagittal series -> 10 (x, y) points; of an axial level's stack -> 2."""

    name: str = "stage1_t2"
    view: ViewName = "t2"
    # "keypoint_heatmap": heatmaps on a feature map read by soft-argmax; "keypoint": the solution's regression head
    model: ModelName = "keypoint_heatmap"
    n_frames: int = 8
    img_size: int = 256
    epochs: int = 60
    shift_limit: float = 0.10
    # the heatmap head (models.HeatmapKeypointNet)
    heatmap_stride: int = 4  # input pixels per heatmap cell: a stride of the backbone's feature maps
    decoder_dim: int = 128  # channels of the feature pyramid and the head
    heatmap_weight: float = 1.0  # weight of the heatmap term beside the L1 on the coordinates
    heatmap_sigma: float = 0.5  # target Gaussian width in heatmap cells (demo T2: 1.0 gave 3.7 px of error, 0.5 2.6 px)


@dataclass(frozen=True)
class Stage2Config(TrainConfig):
    """Per-level classifier: crop sequences -> severity of the conditions the view shows."""

    name: str = "sp1"
    view: ViewName = "t2"
    model: ModelName = "sagittal_3heads"
    condition: Condition = "all"  # "all" (25 labels, T2), "foraminal" (10 labels, T1), "axial" (3 per level)
    # Which condition families inference takes from this preset, and in which rank (see ``Routes``): spinal
    # from every T2 model; subarticular from su, else from the other T2 models; foraminal from T1, else from T2.
    routes: Routes = (("spinal", 1), ("subarticular", 2), ("foraminal", 2))
    n_frames: int = 8
    img_size: int = 128
    epochs: int = 40
    cutmix_p: float = 0.3
    mixup_p: float = 0.3
    mixup_alpha: float = 1.0
    coarse_dropout: bool = True
    vflip: bool = True
    # Training crops with stage 1's error (kaggle_utils/stage1_error.py): the share of training samples cut around
    # keypoints moved by an out-of-fold error field instead of the true ones, and how many such crop sets a series has
    # (sagittal presets; the axial crops are cut from the true points).
    # Off by default: with the heatmap localiser the demo scored 0.704 without them and 0.737 with half (README).
    stage1_error_p: float = 0.0
    stage1_error_draws: int = 4
    # Padded frames enter the attention-LSTM as zeros; False feeds their backbone features, as the solution does.
    lstm_zero_masked: bool = True
    # A sided condition read from its own side's half of the slices: the left row from the left half (index 0 is the
    # patient's left), the right row from the right half reversed (lateral first, as the left half), through one
    # pool and one linear layer for both sides. False: one pool of every frame gives both rows, as the solution does.
    side_halves: bool = False
    # Round 2 of the noisy-label recipe (notebooks/05_denoise, kaggle_utils/denoise.py); "" = off, as in round 1.
    noisy_labels: str = ""  # CSV of label cells ignored in training (denoise.noisy_table, or the solution's file)
    pseudo_labels: str = ""  # CSV of soft targets per study and row (denoise.pseudo_table)
    pseudo_weight: float = 0.5  # with pseudo_labels: loss = (1 - w) * label loss + w * pseudo-label loss

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [family for family, _ in self.routes if family not in CONDITION_FAMILIES]
        if unknown or any(not isinstance(rank, int) or rank < 1 for _, rank in self.routes):
            raise ConfigError(
                f"Stage2Config {self.name} routes={self.routes!r}: (family, rank) pairs of "
                f"{', '.join(CONDITION_FAMILIES)} and ranks from 1"
            )


@dataclass(frozen=True)
class InferConfig:
    """Inference: TTA, batching and the axial level assignment (which preset feeds which condition is each preset's
    ``routes``)."""

    tta_angles: tuple[float, ...] = TTA_ANGLES
    batch_size: int = 8
    # An axial slice images a level at test time when the level's predicted Sagittal T2 point is this close to its
    # plane (wider than training's 3 mm: the predicted point carries the localiser's error)
    axial_max_distance_mm: float = 5.0

    def __post_init__(self) -> None:
        check_values(self)


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the dataclass ``cfg`` with ``overrides`` applied.

    Unknown keys raise a ``ConfigError`` that names the key and the nearest valid ones; string values
    (from the environment or a command line) are cast to the type of the field's current value.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys: {', '.join(sorted(names))}"
            raise ConfigError(f"unknown {type(cfg).__name__} key {key!r}{hint}")
        changes[key] = _cast(key, value, getattr(cfg, key))
    return dataclasses.replace(cfg, **changes)


def _as_tuples(value: Any) -> Any:
    """JSON lists back into the tuples of a tuple field, nested ones too (``routes``)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _cast(key: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return _as_tuples(value) if isinstance(current, tuple) and isinstance(value, list) else value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(value)
        return json.loads(value)
    except ValueError as error:
        raise ConfigError(f"{key}={value!r} does not fit the type of {current!r}") from error


def look_up(name: str, options: dict[str, Any], what: str) -> str:
    """``name`` when ``options`` has it, else a ``ConfigError`` naming it with the nearest options (or all)."""
    if name in options:
        return name
    near = difflib.get_close_matches(name, options, n=3)
    raise ConfigError(
        f"unknown {what} {name!r}; {'did you mean ' + ', '.join(near) if near else 'choose from'}"
        f" {'' if near else ', '.join(options)}".rstrip()
    )


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (what the checkpoint sidecar stores)."""
    return {**dataclasses.asdict(cfg), "config_class": type(cfg).__name__}
