"""Checkpoints rebuild their model from the JSON sidecar alone, and a sidecar that does not fit is named."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from kaggle_utils.bench_train import CachedArrays
from kaggle_utils.config import ConfigError, TrainConfig, preset
from kaggle_utils.engine import (
    MODEL_FIELDS_KEY,
    ClassifierTask,
    CurveLog,
    KeypointTask,
    StepReadout,
    autocast_dtype,
    half_precision_copy,
    keypoint_metrics,
    load_checkpoint,
    make_optimizer,
    prepare_model,
    save_checkpoint,
    train_step,
)
from kaggle_utils.losses import weighted_soft_cross_entropy
from kaggle_utils.models import build_model


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
        ("stage1_t2", {"model": "sagittal_3heads", "config_class": "Stage2Config"}),
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


def _pseudo_batch(cfg: TrainConfig) -> dict:
    generator = torch.Generator().manual_seed(5)
    rows = 2 if cfg.condition == "foraminal" else 5
    return {
        "image": torch.randint(0, 255, (2, 5, cfg.n_frames, 40, 40), dtype=torch.uint8, generator=generator),
        "mask": torch.ones(2, cfg.n_frames, dtype=torch.bool),
        "target": torch.eye(3)[torch.randint(3, (2, 5, rows), generator=generator)],
        "pseudo": torch.rand(2, 5, rows, 3, generator=generator).softmax(-1),
    }


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_classifier_loss_mixes_label_and_pseudo_label_losses(weight: float) -> None:
    """Without mixing augmentations, the training loss with pseudo labels is the weighted sum of the two losses."""
    cfg = preset("fo", "smoke", {"cutmix_p": 0.0, "mixup_p": 0.0, "pseudo_weight": weight})
    task = ClassifierTask(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # no dropout: the two forward passes below see the same network
    batch = _pseudo_batch(cfg)
    torch.manual_seed(1)
    loss, _ = task.loss(model, batch, train=True)
    torch.manual_seed(1)  # the same augmentation draw
    image, mask, target = task.inputs(batch, train=True)
    logits = model(image, mask)["logits"]
    expected = (1 - weight) * weighted_soft_cross_entropy(logits, target) + weight * weighted_soft_cross_entropy(
        logits, batch["pseudo"]
    )
    torch.testing.assert_close(loss, expected)
    torch.manual_seed(1)
    plain, _ = task.loss(model, {k: v for k, v in batch.items() if k != "pseudo"}, train=True)
    torch.testing.assert_close(plain, weighted_soft_cross_entropy(logits, target))


def test_curve_log_appends_rows_and_rewrites_when_a_column_appears_or_rows_are_replaced(tmp_path: Path) -> None:
    log = CurveLog(tmp_path / "curves.csv")
    log.write({"step": 1, "train_loss": 0.5})
    log.write({"step": 2, "train_loss": 0.4})
    log.write({"step": 2, "val_loss": 0.6})  # a new column
    log.write({"step": 3, "train_loss": 0.3})
    table = pd.read_csv(log.path)
    assert list(table.columns) == ["step", "train_loss", "val_loss"] and table["step"].tolist() == [1, 2, 2, 3]
    log.rows = log.rows[:2]  # a resumed run keeps what its saved state had logged
    log.write({"step": 3, "train_loss": 0.35})
    assert pd.read_csv(log.path)["train_loss"].tolist() == [0.5, 0.4, 0.35]


def test_keypoint_metrics_count_points_in_pixels_and_coordinates_in_shares_of_the_image() -> None:
    target = torch.full((1, 4, 2), 0.5)
    # per point (x, y) errors in relative units: none, 0.004 in x, 0.03 in both, 0.1 in y
    pred = target + torch.tensor([[[0.0, 0.0], [0.004, 0.0], [0.03, 0.03], [0.0, 0.1]]])
    metrics = keypoint_metrics(pred, target)
    distances = torch.tensor([0.0, 0.004, 0.03 * 2**0.5, 0.1]) * 256  # 0, 1.0, 10.9, 25.6 px
    assert metrics["mean_px"] == pytest.approx(float(distances.mean()), rel=1e-5)
    assert metrics["within_5px"] == pytest.approx(2 / 4)
    assert metrics["within_1pct"] == pytest.approx(5 / 8)  # coordinates: 0, 0, .004, 0, .03, .03, 0, .1
    assert metrics["within_5pct"] == pytest.approx(7 / 8)
    assert metrics["loss"] == pytest.approx((0.004 + 0.06 + 0.1) / 8, rel=1e-5)


def test_step_readout_gives_the_loss_and_gradient_norm_as_floats() -> None:
    assert StepReadout(torch.tensor(1.5), torch.tensor(2.0, dtype=torch.float64)).read() == (1.5, 2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the asynchronous readout needs a GPU")
def test_step_readout_on_a_gpu_reads_its_own_step_while_later_work_is_queued() -> None:
    x = torch.randn(2048, 2048, device="cuda")
    readouts = []
    for step in range(5):
        x = (x @ x).clamp_(-1, 1)
        readouts.append(StepReadout(x.abs().sum() * 0 + step, x.new_tensor(10.0 * step)))
    assert [r.read() for r in readouts] == [(float(k), 10.0 * k) for k in range(5)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="waiting for the device is a GPU matter")
@pytest.mark.parametrize("name", ["stage1_t1", "sp1"])
def test_a_training_step_on_a_gpu_never_waits_for_it(tmp_path: Path, name: str) -> None:
    # Augmentation (every op drawn), forward, loss, backward, clipping and AdamW are queued without a read-back or
    # a copy from pageable memory, so the host queues the next step while the GPU still runs this one.
    device = torch.device("cuda")
    cfg = dataclasses.replace(preset(name, "smoke"), blur_p=1.0, distort_p=1.0, batch_size=16)
    batch = CachedArrays.write(tmp_path, n_studies=16, n_slices=17).first_batch(cfg, device)
    model = prepare_model(cfg, device).train()
    task = KeypointTask(cfg, device) if cfg.stage == 1 else ClassifierTask(cfg, device)
    optimizer = make_optimizer(model, cfg, device)
    dtype = autocast_dtype(device, cfg.amp, cfg.amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    for _ in range(2):  # first calls may set up libraries (cuDNN, cuBLAS), which can wait once
        train_step(model, task, batch, optimizer, scaler, dtype, cfg.grad_clip)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(model, task, batch, optimizer, scaler, dtype, cfg.grad_clip)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_auto_precision_follows_the_compute_capability_not_is_bf16_supported(monkeypatch, capability, expected):
    """A T4 (7.5) reports bf16 as supported but only emulates it: it trains and predicts in fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype(torch.device("cuda", 0), enabled=True) == expected
    assert autocast_dtype(torch.device("cpu"), enabled=True) is None


def _predictions(cfg: TrainConfig, device: torch.device, batch: dict) -> torch.Tensor:
    torch.manual_seed(0)
    model = prepare_model(cfg, device).eval()
    task = KeypointTask(cfg, device) if cfg.stage == 1 else ClassifierTask(cfg, device)
    return task.predict(model, batch).cpu()


@pytest.mark.parametrize("name", ["stage1_t1", "sp1"])
def test_prediction_on_the_cpu_stays_fp32(tmp_path: Path, name: str) -> None:
    cfg = preset(name, "smoke")
    batch = CachedArrays.write(tmp_path, n_studies=4, n_slices=17).first_batch(cfg, torch.device("cpu"))
    mixed, full = (
        _predictions(cfg, torch.device("cpu"), batch),
        _predictions(dataclasses.replace(cfg, amp=False), torch.device("cpu"), batch),
    )
    assert mixed.dtype == torch.float32 and torch.equal(mixed, full)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast prediction needs a GPU")
@pytest.mark.parametrize(("name", "tolerance"), [("stage1_t1", 1 / 256), ("sp1", 0.02)])
def test_prediction_under_autocast_agrees_with_fp32(tmp_path: Path, name: str, tolerance: float) -> None:
    """Within a pixel of the 256 grid for keypoints, 0.02 for probabilities (fp16 on a T4, bf16 from Ampere on)."""
    device = torch.device("cuda")
    cfg = dataclasses.replace(preset(name, "smoke"), batch_size=8)
    batch = CachedArrays.write(tmp_path, n_studies=8, n_slices=17).first_batch(cfg, device)
    mixed, full = _predictions(cfg, device, batch), _predictions(dataclasses.replace(cfg, amp=False), device, batch)
    torch.testing.assert_close(mixed, full, rtol=0, atol=tolerance)
