"""Checkpoints that rebuild their model alone: the weights with a JSON sidecar (resolved config, fold, seed, version,
commit, metrics). The weights file repeats the config fields that define the network, so a sidecar of another model
fails to load instead of predicting with the wrong input. Also: the half-precision copies of the weights dataset,
a finished checkpoint to fine-tune from, and whether a saved config describes the same run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kaggle_utils
from kaggle_utils.core.config import ConfigError, TrainConfig, apply_overrides, renamed, to_dict
from kaggle_utils.core.devices import default_device, place_model
from kaggle_utils.core.paths import REPO_ROOT, RESUME_SUFFIX
from kaggle_utils.core.presets import from_dict
from kaggle_utils.models.networks import build_model


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


MODEL_FIELDS_KEY = "__config__"
"""Entry of the weights file that repeats the config fields the weights were trained for (a JSON string)."""


MODEL_FIELDS = ("view", "model", "backbone", "condition", "n_frames", "img_size")
"""Config fields that define the network and its input; frames and size do not change any weight shape, so only
this copy inside the weights file can tell that a sidecar describes another model."""


def _model_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in MODEL_FIELDS if k in config}


def _check_model_fields(saved: str | None, config: dict[str, Any]) -> None:
    """Raise when the weights were saved for other values than the sidecar's; checkpoints without the entry pass."""
    if saved is None:
        return
    trained, described = renamed(json.loads(saved)), _model_fields(renamed(config))
    differ = [
        f"{k}: trained {trained.get(k)!r}, sidecar {described.get(k)!r}"
        for k in MODEL_FIELDS
        if trained.get(k) != described.get(k)
    ]
    if differ:
        raise RuntimeError("; ".join(differ))


INIT_FIELDS = ("model", "backbone", "condition")
"""Fields a checkpoint to fine-tune from must share with the config (the view, frames and size may differ)."""


def load_initial_weights(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with the weights of ``cfg.init_checkpoint``, a finished checkpoint of this project, to fine-tune
    from (another view, more data, a round-2 run). The error names the file and what does not fit."""
    path = Path(cfg.init_checkpoint).expanduser()
    if path.name.endswith(RESUME_SUFFIX) or not path.is_file():
        what = "the resume state of an unfinished run" if path.is_file() else "no such file"
        raise ConfigError(f"init_checkpoint={cfg.init_checkpoint!r}: {what}; give a finished checkpoint (*.pt)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state.pop(MODEL_FIELDS_KEY, "{}"))
    differ = [
        f"{k}: {saved[k]!r} there, {getattr(cfg, k, None)!r} here"
        for k in INIT_FIELDS
        if k in saved and saved[k] != getattr(cfg, k, None)
    ]
    if differ:
        raise ConfigError(f"init_checkpoint {path} is another network than {cfg.name}'s: {'; '.join(differ)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"init_checkpoint {path}: its weights do not fit {cfg.name}'s model: {error}") from error
    return model


def save_checkpoint(
    model: nn.Module, cfg: TrainConfig, path: Path, fold: int, metrics: dict, seconds: float, extra: dict | None = None
) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state[MODEL_FIELDS_KEY] = json.dumps(_model_fields(to_dict(cfg)))
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    sidecar = {
        "config": to_dict(cfg),
        "fold": fold,
        "seed": cfg.seed,
        "version": kaggle_utils.__version__,
        "git_commit": git_commit(),
        "train_seconds": round(seconds, 1),
        "metrics": {"val": metrics},
        **(extra or {}),
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return sidecar


FP16_MAX = torch.finfo(torch.float16).max


def half_precision_copy(source: Path, target: Path) -> tuple[int, int]:
    """Copy a checkpoint with its float tensors in fp16, as the weights dataset holds them: half the upload and
    half the files the kernel reads. ``load_checkpoint`` casts them back into the model's fp32 parameters, so an
    fp16 autocast (a T4) computes with the same weights as from the fp32 file; bf16 and fp32 round them further
    or not at all (within 1e-3 relative, tested). A tensor beyond fp16's range stays fp32.
    Returns the sizes in bytes of the source and the copy."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    halved = {key: _to_half(value) for key, value in state.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save(halved, tmp)
    tmp.replace(target)
    return source.stat().st_size, target.stat().st_size


def _to_half(value: Any) -> Any:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == torch.float16:
        return value
    if value.numel() and value.abs().max() > FP16_MAX:
        return value
    return value.half()


def load_checkpoint(path: Path, device: torch.device | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a model from its JSON sidecar alone and load its weights (no pretrained download)."""
    sidecar_path = Path(path).with_suffix(".json")
    if not sidecar_path.exists():
        raise FileNotFoundError(f"{path}: no sidecar {sidecar_path.name} beside the weights")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        cfg = apply_overrides(from_dict(sidecar["config"]), {"pretrained": False, "weights_file": ""})
        model = build_model(cfg)
    except (ValueError, KeyError) as error:  # ConfigError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{sidecar_path}: this version cannot rebuild the model it describes: {error}") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        _check_model_fields(state.pop(MODEL_FIELDS_KEY, None), sidecar["config"])
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(
            f"{path}: weights do not match the model its sidecar describes ({cfg.name}): {error}"
        ) from error
    return place_model(model, cfg, device or default_device()).eval(), cfg, sidecar


RUN_INDEPENDENT_FIELDS = ("resume", "num_workers", "eval_every", "routes")
"""Config fields that do not change what a run computes: a resume state or a finished checkpoint saved with
other values of these still counts as the same run."""


def run_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_INDEPENDENT_FIELDS}


def same_run(config: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a saved config (sidecar or resume state) describes the run ``cfg`` asks for. A field the saved config
    lacks was added later with its default, which keeps the earlier behaviour, so it counts as that default."""
    defaults = json.loads(json.dumps(to_dict(type(cfg)())))
    return run_fields({**defaults, **renamed(config)}) == run_fields(json.loads(json.dumps(to_dict(cfg))))
