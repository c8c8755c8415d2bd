"""A run's parameters: a notebook's ``parameters`` cell overridden from the environment, each checked by its rule
before any work (``PARAMETERS``), the same checks for the parameters a headless run passes, and the command lines'
override arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from kaggle_utils.core.config import ConfigError, InferConfig, PreprocessConfig, apply_overrides, look_up
from kaggle_utils.core.constants import ALL_STUDIES_FOLD
from kaggle_utils.core.presets import (
    ALL_STAGE2_PRESETS,
    FULL_PRESETS,
    PROFILES,
    STAGE1_PRESETS,
    preset,
    presets_or_default,
)


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
            look_up(name, dict.fromkeys(options), what)
        return value

    return check


def _profile(key: str, value: Any) -> str:
    return value if value == "auto" else look_up(str(value), PROFILES, "profile")


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
    "PRESETS": _names(ALL_STAGE2_PRESETS, "stage-2 preset"),
    "VIEWS": _names([FULL_PRESETS[n].view for n in STAGE1_PRESETS], "localiser view"),
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
    views = parsed.get("VIEWS", [FULL_PRESETS[n].view for n in STAGE1_PRESETS])
    names = [f"stage1_{view}" for view in views] + presets_or_default(parsed.get("PRESETS", []))
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
