"""Checkpoints rebuild their model from the JSON sidecar alone, a sidecar that does not fit is named, and the
half-precision copies of the weights dataset predict as the originals."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from kaggle_utils.core.config import ConfigError, TrainConfig
from kaggle_utils.core.presets import preset
from kaggle_utils.models.checkpoints import (
    MODEL_FIELDS_KEY,
    half_precision_copy,
    load_checkpoint,
    same_run,
    save_checkpoint,
)
from kaggle_utils.models.networks import build_model


def _saved(tmp_path: Path, name: str) -> tuple[torch.nn.Module, TrainConfig, Path]:
    cfg = preset(name, "smoke")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path / f"{name}-f0-s42.pt"
    save_checkpoint(model, cfg, path, fold=0, metrics={"loss": 1.0}, seconds=0.0)
    return model, cfg, path


def _edit_sidecar(path: Path, **config: object) -> None:
    sidecar_path = path.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["config"].update(config)
    sidecar_path.write_text(json.dumps(sidecar))


def _inputs(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of two: (B, F, 1, S, S) for stage 1, (B, 5, F, 1, S, S) for stage 2, the last frame masked."""
    levels = () if cfg.stage == 1 else (5,)
    image = torch.rand(
        2, *levels, cfg.n_frames, 1, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1)
    )
    mask = torch.ones(2, cfg.n_frames, dtype=torch.bool)
    mask[:, -1] = False
    return image, mask


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("sp1", {"backbone": "test_resnet"}),
        ("stage1_t2", {"model": "keypoint"}),  # the other localiser head
        ("sp1", {"n_frames": 5}),  # no weight shape changes: the copy of the fields in the weights file tells
        ("stage1_t1", {"img_size": 128}),
    ],
)
def test_sidecar_of_another_model_is_named(tmp_path: Path, name: str, edit: dict) -> None:
    _, _, path = _saved(tmp_path, name)
    _edit_sidecar(path, **edit)
    with pytest.raises(RuntimeError, match=re.escape(f"{path}: weights do not match the model its sidecar describes")):
        load_checkpoint(path, torch.device("cpu"))


def test_sidecar_whose_model_contradicts_its_condition_is_named(tmp_path: Path) -> None:
    _, _, path = _saved(tmp_path, "fo")
    _edit_sidecar(path, condition="all")  # a 1-head foraminal model described as the 25-row one
    with pytest.raises(ConfigError, match=re.escape(f"{path.with_suffix('.json')}: this version cannot rebuild")):
        load_checkpoint(path, torch.device("cpu"))


def test_missing_sidecar_is_named(tmp_path: Path) -> None:
    _, _, path = _saved(tmp_path, "stage1_t1")
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path}: no sidecar {path.stem}.json")):
        load_checkpoint(path, torch.device("cpu"))


def test_unknown_config_field_names_the_sidecar_and_the_field(tmp_path: Path) -> None:
    _, _, path = _saved(tmp_path, "su")
    _edit_sidecar(path, n_frame=8)
    with pytest.raises(
        ConfigError, match=r"su-f0-s42\.json: .*unknown Stage2Config key 'n_frame'; did you mean n_frames"
    ):
        load_checkpoint(path, torch.device("cpu"))


@pytest.mark.parametrize("name", ["stage1_t2", "fo", "sp2"])
def test_round_trip_rebuilds_the_config_and_the_outputs(tmp_path: Path, name: str) -> None:
    model, cfg, path = _saved(tmp_path, name)
    loaded, loaded_cfg, sidecar = load_checkpoint(path, torch.device("cpu"))
    assert loaded_cfg == cfg and sidecar["fold"] == 0 and sidecar["metrics"] == {"val": {"loss": 1.0}}
    assert not loaded.training
    image, mask = _inputs(cfg)
    with torch.no_grad():
        expected, got = model(image, mask), loaded(image, mask)
    if cfg.stage == 2:
        expected, got = expected["logits"], got["logits"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_weights_without_the_config_entry_still_load(tmp_path: Path) -> None:
    model, cfg, path = _saved(tmp_path, "sp1")
    torch.save({k: v for k, v in torch.load(path, weights_only=True).items() if k != MODEL_FIELDS_KEY}, path)
    loaded, _, _ = load_checkpoint(path, torch.device("cpu"))
    image, mask = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, mask)["logits"], model(image, mask)["logits"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["stage1_t2", "su"])
def test_a_half_precision_copy_is_half_the_size_and_predicts_as_the_original(tmp_path: Path, name: str) -> None:
    model, cfg, path = _saved(tmp_path, name)
    copy = tmp_path / "fp16" / path.name
    copy.parent.mkdir()
    shutil.copy2(path.with_suffix(".json"), copy.with_suffix(".json"))
    full, half = half_precision_copy(path, copy)
    assert half < 0.55 * full and (full, half) == (path.stat().st_size, copy.stat().st_size)
    stored = torch.load(copy, weights_only=True)
    floats = [v for v in stored.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    loaded, _, _ = load_checkpoint(copy, torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # computed in fp32 on the CPU, as before
    image, mask = _inputs(cfg)
    with torch.no_grad():
        expected, got = model(image, mask), loaded(image, mask)
    if cfg.stage == 2:
        expected, got = expected["logits"].softmax(-1), got["logits"].softmax(-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_a_tensor_beyond_the_range_of_fp16_stays_fp32(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({"small": torch.ones(3), "big": torch.tensor([1e6]), "steps": torch.tensor(7)}, path)
    half_precision_copy(path, tmp_path / "copy.pt")
    stored = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert (stored["small"].dtype, stored["big"].dtype, stored["steps"].dtype) == (
        torch.float16,
        torch.float32,
        torch.int64,
    )


def test_a_checkpoint_of_the_version_that_said_plane_still_loads_and_counts_as_the_same_run(tmp_path: Path) -> None:
    """Before 0.2 a config's view was its ``plane``: in the sidecar and in the copy of the fields in the weights."""
    model, cfg, path = _saved(tmp_path, "fo")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["config"]["plane"] = sidecar["config"].pop("view")
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    state = torch.load(path, weights_only=True)
    fields = json.loads(state[MODEL_FIELDS_KEY])
    fields["plane"] = fields.pop("view")
    state[MODEL_FIELDS_KEY] = json.dumps(fields)
    torch.save(state, path)
    loaded, loaded_cfg, _ = load_checkpoint(path, torch.device("cpu"))
    assert loaded_cfg.view == "t1" and same_run(sidecar["config"], cfg)
    image, mask = _inputs(cfg)
    torch.testing.assert_close(loaded(image, mask)["logits"], model(image, mask)["logits"])


def test_a_sidecar_from_before_side_halves_loads_as_the_run_it_was(tmp_path: Path) -> None:
    """A field added later with a default that keeps the earlier behaviour: an older sidecar without it is the same
    run at that default (it resumes and is skipped as trained), and a different value is a different run."""
    model, cfg, path = _saved(tmp_path, "fo")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    del sidecar["config"]["side_halves"]
    assert same_run(sidecar["config"], cfg)
    assert not same_run(sidecar["config"], dataclasses.replace(cfg, side_halves=True))
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    loaded, loaded_cfg, _ = load_checkpoint(path, torch.device("cpu"))
    assert loaded_cfg.side_halves is False
    image, mask = _inputs(cfg)
    torch.testing.assert_close(loaded(image, mask)["logits"], model(image, mask)["logits"])
