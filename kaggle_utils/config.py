"""Configuration: dataclasses for each step, the solution's six models as named presets, overrides.

The six presets of the solution differ in a handful of values, so each is written as a small delta
of shared defaults. ``demo`` and ``smoke`` profiles are further deltas of the same presets: a tiny
randomly initialised backbone and a few epochs, for CPU runs and tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

from kaggle_utils.constants import ALL_STUDIES_FOLD, CONDITION_FAMILIES, TTA_ANGLES
from kaggle_utils.views import view

Plane = Literal["t1", "t2", "axial"]  # views.VIEWS: Sagittal T1, Sagittal T2/STIR, Axial T2
ModelName = Literal["keypoint", "keypoint_heatmap", "sagittal_1head", "sagittal_3heads", "axial_crops"]  # models.MODELS
STAGE1_MODELS: tuple[str, ...] = ("keypoint", "keypoint_heatmap")
"""The localisers: the solution's regression head, and the spatial (heatmap) head."""
Condition = Literal["all", "foraminal", "axial"]  # labels.CONDITION_ROWS: the rows a stage-2 model predicts
AmpDtype = Literal["auto", "bf16", "fp16"]
Routes = tuple[tuple[str, int], ...]
"""A stage-2 preset's routing: (condition family, rank) pairs. For each row of a family, the presets of the first
rank that predicted it give it, averaged; a family a preset does not list takes nothing from it."""


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
    **{name: _whole(1) for name in ("stage1_error_draws",)},
    **{name: _whole(0) for name in ("num_workers", "eval_every")},
    "n_folds": _whole(2),
    **{name: _NON_NEGATIVE for name in ("lr_min", "weight_decay", "shift_limit", "scale_limit", "rotate_limit")},
    **{name: _POSITIVE for name in ("lr", "grad_clip", "heatmap_sigma", "axial_max_distance_mm", "mixup_alpha")},
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
    """Deterministic preprocessing (cached as uint8 arrays); multipliers are the solution's crop geometry."""

    img_size: int = 256
    percentiles: tuple[float, float] = (1.0, 99.0)
    t2_width_mult: float = 0.75  # half-width of a T2 crop, in median disc widths
    t2_offset_mult: float = 0.5  # shift of the T2 crop centre towards the front, in crop half-widths
    t2_height_mult: float = 1.3  # half-height of a T2 crop, in median level spacings
    t1_width_mult: float = 1.25  # half-width of a T1 crop, in median level spacings (relative to width)
    t1_height_mult: float = 1.0  # half-height of a T1 crop, in median level spacings
    n_folds: int = 4
    fold_seed: int = 42
    # The solution's metadata files, each a path or a bare name looked for in DATA_DIR and the attached datasets.
    keypoints_file: str = ""  # corrected keypoints; "" = coords_v7.csv or coords_rsna_improved.csv where found
    folds_file: str = ""  # the solution's metadata.csv, to train on its folds; "" = the project's own folds
    num_workers: int = 2
    # An axial slice images a level when the level's Sagittal T2 point is this close to its plane (training samples)
    axial_max_distance_mm: float = 3.0

    def __post_init__(self) -> None:
        check_values(self)


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by both stages."""

    name: str
    plane: Plane  # "t1" (Sagittal T1), "t2" (Sagittal T2/STIR) or "axial" (Axial T2)
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
        return view(self.plane).description


@dataclass(frozen=True)
class Stage1Config(TrainConfig):
    """Keypoint localiser: middle frames of a sagittal series -> 10 (x, y) points; of an axial level's stack -> 2."""

    name: str = "stage1_t2"
    plane: Plane = "t2"
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
    """Per-level classifier: crop sequences -> severity of the conditions the plane shows."""

    name: str = "sp1"
    plane: Plane = "t2"
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


_STAGE1_T2 = Stage1Config()
_STAGE2_T2 = Stage2Config()

FULL_PRESETS: dict[str, TrainConfig] = {
    "stage1_t1": dataclasses.replace(_STAGE1_T2, name="stage1_t1", plane="t1"),
    "stage1_t2": _STAGE1_T2,
    # the axial localiser: the left and right subarticular points of a level from its assigned slice and the two
    # neighbours (3 frames of the cached 5)
    "stage1_axial": dataclasses.replace(_STAGE1_T2, name="stage1_axial", plane="axial", n_frames=3),
    "fo": dataclasses.replace(
        _STAGE2_T2,
        name="fo",
        plane="t1",
        model="sagittal_1head",
        condition="foraminal",
        n_frames=24,
        img_size=96,
        epochs=32,
        vflip=False,
        routes=(("foraminal", 1),),
    ),
    "sp1": _STAGE2_T2,
    "sp2": dataclasses.replace(_STAGE2_T2, name="sp2", n_frames=5, img_size=256),
    "su": dataclasses.replace(
        _STAGE2_T2, name="su", n_frames=24, img_size=96, routes=(("spinal", 1), ("subarticular", 1), ("foraminal", 2))
    ),
    # Axial T2, per level: the canal and both recess crops of the 5-slice stack around the assigned slice. Its
    # routes rank it among the axial presets; the axial prediction then joins the sagittal one in the blend.
    "ax": dataclasses.replace(
        _STAGE2_T2,
        name="ax",
        plane="axial",
        model="axial_crops",
        condition="axial",
        n_frames=5,
        img_size=128,
        epochs=30,
        cutmix_p=0.0,  # sequence cutmix swaps the right rows' half-sequences; an axial level has no such layout
        routes=(("spinal", 1), ("subarticular", 1)),
    ),
}
"""The solution's six configurations and the axial classifier."""

STAGE1_PRESETS: tuple[str, ...] = tuple(n for n, c in FULL_PRESETS.items() if c.stage == 1)
STAGE2_PRESETS: tuple[str, ...] = tuple(n for n, c in FULL_PRESETS.items() if c.stage == 2)
"""The default preset lists of the notebooks and the Makefile (``python -m kaggle_utils.config presets``)."""


def preset_routes(configs: Iterable[TrainConfig]) -> dict[str, dict[str, int]]:
    """Preset name -> {condition family: rank} of stage-2 configs (``Stage2Config.routes``); a preset that routes
    nothing is an error that names it, since its predictions would be dropped."""
    routes = {cfg.name: dict(getattr(cfg, "routes", ())) for cfg in configs}
    unrouted = [name for name, families in routes.items() if not families]
    if unrouted:
        raise ConfigError(f"stage-2 presets {', '.join(unrouted)} route no condition family: set their routes")
    return routes


_CPU_DELTA: dict[str, Any] = dict(
    # timm's tiny test network with batch norm: trains from scratch in CPU minutes (a LayerNorm stem, as in
    # test_convnext, sees zero variance on the black padding and its gradients explode)
    backbone="test_efficientnet",
    pretrained=False,
    drop_path_rate=0.0,
    batch_size=4,
    lr=1e-3,
    num_workers=0,
    # A few dozen studies and a few hundred steps: the solution's heavy augmentation would hide the signal.
    shift_limit=0.1,
    scale_limit=0.15,
    rotate_limit=20.0,  # covers the +-20 degrees of the rotation TTA
    blur_p=0.2,
    distort_p=0.0,
    cutmix_p=0.1,
    mixup_p=0.1,
)
PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    # A CPU run of a few minutes: tiny backbone from scratch, small images, few epochs.
    "demo": {**_CPU_DELTA, "epochs": 20},
    # Seconds: the tests execute every notebook with this.
    "smoke": {**_CPU_DELTA, "epochs": 1, "batch_size": 4},
}
"""Named deltas applied on top of every preset."""

PROFILE_PRESET_DELTAS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        # the solution's zoom range: series differ in field of view, and a zoomed-in spine misleads the localiser
        # The top level (L1/L2) is found late: T1 at 40 epochs 3.6 px of mean error and 81 % of points within 5 px,
        # 60 epochs 3.0 px and 87 %, 80 epochs 2.4 px and 90 %; T2 2.3 px and 88 % at 40 and 60, 1.8 px and 94 % at 80
        "stage1_t1": dict(img_size=128, epochs=80, scale_limit=0.25),
        "stage1_t2": dict(img_size=128, epochs=80, scale_limit=0.25),
        "stage1_axial": dict(img_size=96, epochs=6),  # the synthetic canal is easy to find: 1.8 px after 6 epochs
        "fo": dict(img_size=64, n_frames=16),
        "sp1": dict(img_size=64),
        "sp2": dict(img_size=96),
        "su": dict(img_size=64, n_frames=16),
        "ax": dict(img_size=64, epochs=12),
    },
    "smoke": {
        "stage1_t1": dict(img_size=64),
        "stage1_t2": dict(img_size=64),
        "stage1_axial": dict(img_size=64),
        "fo": dict(img_size=32, n_frames=8),
        "sp1": dict(img_size=32),
        "sp2": dict(img_size=32),
        "su": dict(img_size=32, n_frames=8),
        "ax": dict(img_size=32),
    },
}
"""Per-preset sizes of the small profiles (image size and frames dominate CPU time)."""


def preset(name: str, profile: str = "full", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A preset by name, with a profile's deltas and then the caller's overrides applied and validated. The
    overrides may hold keys of either stage (one dict serves every preset of a run): each preset takes the keys its
    config has; a key that no training config has is an error naming it."""
    cfg = FULL_PRESETS[_look_up(name, FULL_PRESETS, "preset")]
    delta = {**PROFILES[_look_up(profile, PROFILES, "profile")], **PROFILE_PRESET_DELTAS.get(profile, {}).get(name, {})}
    fields = {f.name for f in dataclasses.fields(cfg)}
    cfg = apply_overrides(cfg, {k: v for k, v in delta.items() if k in fields})  # stage-2 keys skip stage 1
    return apply_overrides(cfg, train_overrides_for(cfg, overrides or {}))


def train_overrides_for(cfg: TrainConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides ``cfg``'s class has fields for, after checking that every key is a field of some training
    config (``Stage1Config`` or ``Stage2Config``)."""
    known = {f.name for cls in (Stage1Config, Stage2Config) for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown training config key {key!r}{hint}")
    fields = {f.name for f in dataclasses.fields(cfg)}
    return {key: value for key, value in overrides.items() if key in fields}


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


def _look_up(name: str, options: dict[str, Any], what: str) -> str:
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


def from_dict(values: dict[str, Any]) -> Any:
    """Rebuild a config from ``to_dict`` output (the checkpoint sidecar); unknown fields are an error."""
    values = dict(values)
    classes = {c.__name__: c for c in (Stage1Config, Stage2Config, PreprocessConfig, InferConfig)}
    cls = classes[values.pop("config_class")]
    known = FULL_PRESETS.get(values.get("name", ""))
    if cls is Stage2Config and "routes" not in values and isinstance(known, Stage2Config):
        values["routes"] = known.routes  # a sidecar from before routes were declared: its preset's
    return apply_overrides(cls(), values)


def notebook_params(**defaults: Any) -> SimpleNamespace:
    """A notebook's parameters: the defaults of its ``parameters`` cell, each overridable by an
    environment variable of the same name (JSON for lists, dicts, numbers and booleans), each checked by its
    ``PARAMETERS`` entry (type, range, known names) before the notebook does any work."""
    values = {}
    for key, default in defaults.items():
        raw = os.environ.get(key)
        if raw is None or raw == "":
            value = default
        elif isinstance(default, str) or default is None:
            value = raw
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ConfigError(f"environment variable {key}={raw!r} is not valid JSON") from error
        values[key] = check_parameter(key, value)
    return SimpleNamespace(**values)


def _switch(key: str, value: Any) -> bool | str:
    """``auto``, or a yes/no given as a boolean or as text (``"false"`` is no: ``bool("false")`` is not)."""
    if isinstance(value, bool) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off", ""):
        return False
    raise ConfigError(f"{key}={value!r}: expected auto, true or false")


def _folds(key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in value):
        raise ConfigError(f"{key}={value!r}: expected a list of fold numbers, e.g. [0] or [0, 1, 2, 3]")
    if any(f < ALL_STUDIES_FOLD for f in value):
        raise ConfigError(f"{key}={value!r}: folds are 0, 1, ... ({ALL_STUDIES_FOLD}: a final model on every study)")
    return value


def _names(options: Iterable[str], what: str) -> Any:
    def check(key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}={value!r}: expected a list of {what} names")
        for name in value:
            _look_up(name, dict.fromkeys(options), what)
        return value

    return check


def _profile(key: str, value: Any) -> str:
    return value if value == "auto" else _look_up(str(value), PROFILES, "profile")


def _mapping(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f'{key}={value!r}: expected a JSON object of config fields, e.g. {{"epochs": 2}}')
    return value


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={value!r}: expected a whole number >= 0")
    return value


PARAMETERS: dict[str, Any] = {
    "RUN_CV": _switch,
    "FOLDS": _folds,
    "PRESETS": _names(STAGE2_PRESETS, "stage-2 preset"),
    "PLANES": _names([FULL_PRESETS[n].plane for n in STAGE1_PRESETS], "localiser view (plane)"),
    "PROFILE": _profile,
    "TRAIN_OVERRIDES": _mapping,
    "INFER_OVERRIDES": _mapping,
    "PREPROCESS_OVERRIDES": _mapping,
    "WORKERS": _count,
}
"""How each notebook parameter with rules is checked (and parsed: a switch's text becomes a boolean)."""


def check_parameter(key: str, value: Any) -> Any:
    """A notebook parameter checked (and parsed) by its ``PARAMETERS`` entry; other keys pass as they are."""
    check = PARAMETERS.get(key)
    return value if check is None else check(key, value)


def check_parameters(values: dict[str, str]) -> None:
    """Parameters as a headless run passes them (environment strings) checked before its first notebook runs: each
    by its rule, and the training and inference overrides by building every preset they reach with them, so a wrong
    preset name or an ``epochs`` of 0 stops the run in seconds, naming the key, instead of after the notebooks
    before the one that reads it."""
    parsed = {}
    for key, raw in values.items():
        if key in PARAMETERS and raw != "":
            text_parameter = key in ("RUN_CV", "PROFILE")
            try:
                parsed[key] = check_parameter(key, raw if text_parameter else json.loads(raw))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{key}={raw!r} is not valid JSON") from error
    profile = parsed.get("PROFILE", "auto")
    profile = "smoke" if profile == "auto" else profile  # the presets' fields are the same in every profile
    planes = parsed.get("PLANES", [FULL_PRESETS[n].plane for n in STAGE1_PRESETS])
    names = [f"stage1_{plane}" for plane in planes] + presets_or_default(parsed.get("PRESETS", []))
    for name in names:
        preset(name, profile, parsed.get("TRAIN_OVERRIDES", {}))
    apply_overrides(InferConfig(), parsed.get("INFER_OVERRIDES", {}))
    apply_overrides(PreprocessConfig(), parsed.get("PREPROCESS_OVERRIDES", {}))


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """The command lines' way to change config fields: ``--overrides JSON`` and repeated ``--set KEY=VALUE``."""
    parser.add_argument("--overrides", default="{}", help="TrainConfig overrides as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig override")


def parsed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides of ``add_override_arguments`` as one dict (``--set`` wins); a malformed one is named."""
    malformed = [item for item in args.set if "=" not in item]
    if malformed:
        raise ConfigError(f"--set takes KEY=VALUE, got {', '.join(malformed)}")
    try:
        overrides = json.loads(args.overrides)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--overrides is not valid JSON: {args.overrides}") from error
    if not isinstance(overrides, dict):
        raise ConfigError(f"--overrides is not a JSON object: {args.overrides}")
    return {**overrides, **dict(item.split("=", 1) for item in args.set)}


def presets_or_default(names: Iterable[str]) -> list[str]:
    """A notebook's ``PRESETS``: the names given, or every stage-2 preset for an empty list."""
    return list(names) or list(STAGE2_PRESETS)


def resolve_profile(profile: str) -> str:
    """``auto`` means the solution's recipe on a GPU and the CPU demo elsewhere."""
    if profile == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "demo"
    return _look_up(profile, PROFILES, "profile")


if __name__ == "__main__":  # `python -m kaggle_utils.config presets`: the Makefile's default list
    import sys

    if sys.argv[1:] != ["presets"]:
        sys.exit("usage: python -m kaggle_utils.config presets")
    print(" ".join(STAGE1_PRESETS + STAGE2_PRESETS))
