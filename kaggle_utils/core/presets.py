"""The named configurations: the solution's six models and the axial ones as presets, each a small delta of shared
defaults, and the ``demo`` and ``smoke`` profiles as further deltas (a tiny randomly initialised backbone and a few
epochs, for CPU runs and tests); a config rebuilt from a checkpoint's sidecar.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

from kaggle_utils.core.config import (
    ConfigError,
    InferConfig,
    PreprocessConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
    apply_overrides,
    look_up,
    renamed,
)

_STAGE1_T2 = Stage1Config()
_STAGE2_T2 = Stage2Config()

_FO = dataclasses.replace(
    _STAGE2_T2,
    name="fo",
    view="t1",
    model="sagittal_1head",
    condition="foraminal",
    n_frames=24,
    img_size=96,
    epochs=32,
    vflip=False,
    routes=(("foraminal", 1),),
)
"""The solution's T1 model."""

FULL_PRESETS: dict[str, TrainConfig] = {
    "stage1_t1": dataclasses.replace(_STAGE1_T2, name="stage1_t1", view="t1"),
    "stage1_t2": _STAGE1_T2,
    # the axial localiser: the left and right subarticular points of a level from its assigned slice and the two
    # neighbours (3 frames of the cached 5)
    "stage1_axial": dataclasses.replace(_STAGE1_T2, name="stage1_axial", view="axial", n_frames=3),
    "fo": _FO,
    # The T1 model of the defaults: fo reading each side from its own half of the slices (Stage2Config.side_halves),
    # so both sides' labels train one head; with the solution's fo, a model trained from scratch did not learn the
    # narrowing at all (README, "Where it departs").
    "fs": dataclasses.replace(_FO, name="fs", side_halves=True),
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
        view="axial",
        model="axial_crops",
        condition="axial",
        n_frames=PreprocessConfig().axial_stack_slices,  # every slice of a level's cached stack
        img_size=128,
        epochs=30,
        cutmix_p=0.0,  # sequence cutmix swaps the right rows' half-sequences; an axial level has no such layout
        routes=(("spinal", 1), ("subarticular", 1)),
    ),
}
"""The solution's six configurations and the axial classifier."""

OPTIONAL_PRESETS: tuple[str, ...] = ("fo",)
"""Presets trained only when named: the solution's T1 model, which ``fs`` replaces in the defaults."""
STAGE1_PRESETS: tuple[str, ...] = tuple(n for n, c in FULL_PRESETS.items() if c.stage == 1)
STAGE2_PRESETS: tuple[str, ...] = tuple(
    n for n, c in FULL_PRESETS.items() if c.stage == 2 and n not in OPTIONAL_PRESETS
)
"""The default preset lists of the notebooks and the Makefile (``python -m kaggle_utils.core.presets presets``)."""
RECIPE_PRESETS: tuple[str, ...] = STAGE1_PRESETS + STAGE2_PRESETS
"""The default recipe: every localiser and classifier that training, preflight and inference run unless told."""
ALL_STAGE2_PRESETS: tuple[str, ...] = tuple(n for n, c in FULL_PRESETS.items() if c.stage == 2)
"""Every stage-2 preset a notebook's ``PRESETS`` may name."""


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
        # Half the decoder's channels (64) trains 1.6 times faster on 2 cores for the same accuracy: at 80 epochs T1
        # 2.15 px and 92.5 % within 5 px (2.01 px and 92.5 % with 128), T2 1.67 px and 95.8 % (1.70 px, 95.0 %);
        # the heatmap at stride 8 instead would halve the time but cost 3.5 px on both. T2 at 112 px: 1.81 px and
        # 95.8 % in 30 % less time; T1 at 112 px lost more (2.71 px, 86 %), as did T2 on the middle 5 slices (2.09 px).
        "stage1_t1": dict(img_size=128, epochs=80, scale_limit=0.25, decoder_dim=64),
        "stage1_t2": dict(img_size=112, epochs=80, scale_limit=0.25, decoder_dim=64),
        "stage1_axial": dict(img_size=96, epochs=6),  # the synthetic canal is easy to find: 1.8 px after 6 epochs
        "fo": dict(img_size=64, n_frames=16),
        "fs": dict(img_size=64, n_frames=16),
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
        "fs": dict(img_size=32, n_frames=8),
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
    cfg = FULL_PRESETS[look_up(name, FULL_PRESETS, "preset")]
    delta = {**PROFILES[look_up(profile, PROFILES, "profile")], **PROFILE_PRESET_DELTAS.get(profile, {}).get(name, {})}
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


def from_dict(values: dict[str, Any]) -> Any:
    """Rebuild a config from ``to_dict`` output (the checkpoint sidecar, of this version or an earlier one: its
    renamed fields are read, ``config.RENAMED``); unknown fields are an error."""
    values = renamed(values)
    classes = {c.__name__: c for c in (Stage1Config, Stage2Config, PreprocessConfig, InferConfig)}
    cls = classes[values.pop("config_class")]
    known = FULL_PRESETS.get(values.get("name", ""))
    if cls is Stage2Config and "routes" not in values and isinstance(known, Stage2Config):
        values["routes"] = known.routes  # a sidecar from before routes were declared: its preset's
    return apply_overrides(cls(), values)


def presets_or_default(names: Iterable[str]) -> list[str]:
    """A notebook's ``PRESETS``: the names given, or every stage-2 preset for an empty list."""
    return list(names) or list(STAGE2_PRESETS)


def resolve_profile(profile: str) -> str:
    """``auto`` means the solution's recipe on a GPU and the CPU demo elsewhere."""
    if profile == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "demo"
    return look_up(profile, PROFILES, "profile")


if __name__ == "__main__":  # `python -m kaggle_utils.core.presets presets`: the Makefile's default list
    import sys

    if sys.argv[1:] != ["presets"]:
        sys.exit("usage: python -m kaggle_utils.core.presets presets")
    print(" ".join(RECIPE_PRESETS))
