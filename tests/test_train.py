"""Training runs: an interrupted run resumes to the same weights, finished folds are skipped, and two
processes under torchrun (gloo, CPU) train the same model as one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_utils.core.config import ConfigError, TrainConfig
from kaggle_utils.core.constants import ALL_STUDIES_FOLD
from kaggle_utils.core.paths import Paths, resume_state
from kaggle_utils.core.presets import preset
from kaggle_utils.evaluation import crossval
from kaggle_utils.inference import ensemble
from kaggle_utils.io.point_gaps import ESTIMATED
from kaggle_utils.models.checkpoints import load_checkpoint
from kaggle_utils.training import train
from kaggle_utils.training.engine import fit, prepare_model
from kaggle_utils.training.loader import BatchLoader
from kaggle_utils.training.tasks import KeypointTask

CPU = torch.device("cpu")


def _copy_work(prepared: Paths, tmp_path: Path) -> Paths:
    """A work folder of its own (models, logs), sharing the prepared tables and arrays."""
    work = tmp_path / "work"
    shutil.copytree(prepared.work_dir, work, ignore=shutil.ignore_patterns("models", "oof"))
    return Paths(data_dir=prepared.data_dir, work_dir=work)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in torch.load(path, weights_only=True).items() if isinstance(v, torch.Tensor)}


class InterruptedAt:
    """A training loader that stops the run (as Ctrl-C would) when epoch ``epoch`` begins."""

    def __init__(self, loader: BatchLoader, epoch: int) -> None:
        self.loader, self.sampler, self.epoch = loader, loader.sampler, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.sampler.epoch == self.epoch:
            raise KeyboardInterrupt
        return iter(self.loader)


def _fit(paths: Paths, cfg: TrainConfig, interrupt_at: int | None = None) -> Path:
    series = train.training_samples(paths, cfg)
    train_set, val_set = train.datasets(paths, cfg, series, fold=0)
    loader = train.loader(train_set, cfg, train=True)
    if interrupt_at is not None:
        loader = InterruptedAt(loader, interrupt_at)
    checkpoint = paths.checkpoint(cfg.name, 0, cfg.seed)
    fit(cfg, KeypointTask(cfg, CPU), loader, train.loader(val_set, cfg, train=False), checkpoint, fold=0)
    return checkpoint


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(prepared: Paths, tmp_path: Path) -> None:
    cfg = preset("stage1_t2", "smoke", {"epochs": 3, "batch_size": 2})
    straight = _fit(_copy_work(prepared, tmp_path / "a"), cfg)

    paths = _copy_work(prepared, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _fit(paths, cfg, interrupt_at=2)
    checkpoint = paths.checkpoint(cfg.name, 0, cfg.seed)
    state = resume_state(checkpoint)
    assert state.exists() and not checkpoint.exists()
    resumed = _fit(paths, cfg)

    assert not state.exists()
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    log = pd.read_csv(resumed.with_suffix(".log.csv"))
    assert log["step"].dropna().is_monotonic_increasing and log["epoch"].max() == 3
    pd.testing.assert_frame_equal(log, pd.read_csv(straight.with_suffix(".log.csv")))


def test_a_resume_state_of_another_configuration_is_not_used(prepared: Paths, tmp_path: Path, capsys) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("stage1_t2", "smoke", {"epochs": 2, "batch_size": 2})
    with pytest.raises(KeyboardInterrupt):
        _fit(paths, cfg, interrupt_at=1)
    _fit(paths, preset("stage1_t2", "smoke", {"epochs": 2, "batch_size": 2, "lr": 5e-4}))
    assert "saved for another configuration; starting stage1_t2 afresh" in capsys.readouterr().out


def test_finished_folds_are_skipped_unless_the_configuration_changed(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("fo", "smoke", {"fast_dev_run": True})
    (first,) = train.train_folds(paths, cfg, [0], CPU)
    written = first.checkpoint.stat().st_mtime_ns

    (again,) = train.train_folds(paths, preset("fo", "smoke", {"fast_dev_run": True, "num_workers": 1}), [0], CPU)
    assert again.checkpoint.stat().st_mtime_ns == written and again.metrics == first.metrics

    train.train_folds(paths, preset("fo", "smoke", {"fast_dev_run": True, "lr": 5e-4}), [0], CPU)
    assert first.checkpoint.stat().st_mtime_ns != written


def test_fold_minus_one_trains_a_final_model_on_every_study(prepared: Paths, tmp_path: Path, capsys) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("fo", "smoke", {"fast_dev_run": True})
    train_set, val_set = train.datasets(paths, cfg, train.training_samples(paths, cfg), ALL_STUDIES_FOLD)
    assert val_set is None and len(train_set) == train.training_samples(paths, cfg)["study_id"].nunique()
    (result,) = train.train_folds(paths, cfg, [ALL_STUDIES_FOLD], CPU)
    assert result.checkpoint == paths.models_dir / "fo-all-s42.pt" and result.metrics == {}
    assert not paths.oof_dir.exists() or not list(paths.oof_dir.glob("fo-all-*"))  # nothing held out, no OOF
    (again,) = train.train_folds(paths, cfg, [ALL_STUDIES_FOLD], CPU)
    assert "trained before with this configuration, skipped" in capsys.readouterr().out
    _, _, sidecar = load_checkpoint(result.checkpoint, CPU)
    assert sidecar["fold"] == ALL_STUDIES_FOLD

    train.train_folds(paths, preset("stage1_t1", "smoke", {"fast_dev_run": True}), [ALL_STUDIES_FOLD], CPU)
    models = ensemble.load_models(paths, device=CPU)  # the test-time ensemble takes final models like fold models
    assert [m.cfg.name for m in models.stage2["fo"]] == ["fo"] and len(models.stage1["t1"]) == 1
    with pytest.raises(ValueError, match="no folds to cross-validate"):
        crossval.cross_validate(paths, pd.DataFrame(), pd.DataFrame(), [ALL_STUDIES_FOLD], None, None, CPU)


def test_the_axial_localiser_trains_per_level_and_writes_its_oof_by_level(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("stage1_axial", "smoke", {"epochs": 1})
    (result,) = train.train_folds(paths, cfg, [0], CPU)
    samples = train.training_samples(paths, cfg)
    held_out = samples[samples["fold"] == 0].drop_duplicates(["series_id", "level"])
    oof = pd.read_csv(paths.oof_dir / f"{result.checkpoint.stem}.csv")
    assert list(oof.columns[:3]) == ["series_id", "level", "point"] and set(oof["point"]) == {0, 1}
    assert len(oof) == 2 * len(held_out)
    assert set(zip(oof["series_id"], oof["level"], strict=True)) == set(
        zip(held_out["series_id"], held_out["level"], strict=True)
    )
    assert 0 <= result.metrics["mean_px"] < 256


def test_the_axial_classifier_trains_per_level_and_writes_three_rows_a_level(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("ax", "smoke", {"epochs": 1})
    (result,) = train.train_folds(paths, cfg, [0], CPU)
    samples = train.training_samples(paths, cfg)
    held_out = samples[samples["fold"] == 0].drop_duplicates(["series_id", "level"])
    oof = pd.read_csv(paths.oof_dir / f"{result.checkpoint.stem}.csv")
    assert len(oof) == 3 * len(held_out)  # spinal, left and right subarticular of each held-out level
    slugs = {level: f"{level[:2]}_{level[3:]}".lower() for level in held_out["level"]}
    expected = {
        f"{r.study_id}_{row}_{slugs[r.level]}"
        for r in held_out.itertuples()
        for row in ("spinal_canal_stenosis", "left_subarticular_stenosis", "right_subarticular_stenosis")
    }
    assert set(oof["row_id"]) == expected
    assert np.allclose(oof[["normal_mild", "moderate", "severe"]].sum(axis=1), 1, atol=1e-5)
    assert {"spinal", "subarticular"} <= set(result.metrics)


def test_a_run_starts_from_the_weights_of_a_full_checkpoint(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    (trained,) = train.train_folds(paths, preset("fo", "smoke", {"fast_dev_run": True}), [0], CPU)
    tuned = preset("fo", "smoke", {"init_checkpoint": str(trained.checkpoint), "pretrained": True})  # no download
    got, expected = prepare_model(tuned, CPU).state_dict(), _weights(trained.checkpoint)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)

    with pytest.raises(ConfigError, match="is another network than sp1's: model: 'sagittal_1head' there"):
        prepare_model(preset("sp1", "smoke", {"init_checkpoint": str(trained.checkpoint)}), CPU)
    state = resume_state(trained.checkpoint)
    shutil.copy(trained.checkpoint, state)
    with pytest.raises(ConfigError, match="the resume state of an unfinished run"):
        prepare_model(preset("fo", "smoke", {"init_checkpoint": str(state)}), CPU)
    with pytest.raises(ConfigError, match="no such file"):
        prepare_model(preset("fo", "smoke", {"init_checkpoint": str(tmp_path / "nothing.pt")}), CPU)


@pytest.mark.parametrize("name", ["stage1_t1", "stage1_axial", "fo", "ax"])
def test_augmentation_preview_shows_a_training_sample_plain_then_augmented(prepared: Paths, name: str) -> None:
    cfg = preset(name, "smoke", {})
    state = torch.get_rng_state()
    figure = train.augmentation_preview(prepared, cfg, draws=3)
    assert torch.equal(torch.get_rng_state(), state)  # drawn apart from the training's random state
    shown = [ax.images[0].get_array() for ax in figure.axes]
    per_view = 1 if cfg.stage == 1 else 3 if cfg.view == "axial" else 5  # stage 2: a row of five levels (3 crops)
    assert len(shown) == 4 * per_view and all(s.shape == (cfg.img_size, cfg.img_size) for s in shown)
    # the first view is the sample as validation resizes it: the middle frame of its first level
    train_set, _ = train.datasets(prepared, cfg, train.training_samples(prepared, cfg), fold=0)
    train_set.flip = False  # the plain view has no sequence flip (the synthetic studies have one series a plane)
    sample = train_set[0]
    plain = train.middle_frames(sample["image"][None].float() / 255, sample["mask"][None])[0]
    plain = torch.nn.functional.interpolate(plain.reshape(1, -1, *plain.shape[-2:]), size=cfg.img_size, mode="bicubic")
    torch.testing.assert_close(torch.as_tensor(shown[0]).float(), plain[0, 0].clamp(0, 1), atol=1e-5, rtol=0)
    assert all(not np.allclose(shown[0], s) for s in shown[per_view::per_view])  # each draw changes the view
    if cfg.stage == 1:
        offsets = np.concatenate([c.get_offsets() for c in figure.axes[0].collections])
        np.testing.assert_allclose(offsets, sample["target"].numpy() * cfg.img_size, atol=1e-4)
    plt.close(figure)


def test_augmentation_preview_takes_every_view_from_one_series(prepared: Paths, tmp_path: Path, monkeypatch) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("sp1", "smoke", {})
    train_set, val_set = train.datasets(paths, cfg, train.training_samples(paths, cfg), fold=0)
    (study_id, series_ids), (other_study, other_ids) = train_set.records[:2]
    # a study with a second series (another study's crops): training picks one of the two per access
    shutil.copyfile(paths.stage2_array(other_study, other_ids[0]), paths.stage2_array(study_id, other_ids[0]))
    train_set.records[0] = (study_id, series_ids + other_ids[:1])
    monkeypatch.setattr(train, "datasets", lambda *args: (train_set, val_set))
    shown, fill = [], type(train_set).fill

    def spy(self, *args):
        sample = fill(self, *args)
        shown.append(sample["series_id"])
        return sample

    monkeypatch.setattr(type(train_set), "fill", spy)
    plt.close(train.augmentation_preview(paths, cfg, draws=5))
    assert shown == [series_ids[0]] * 6


DDP_SETTINGS = {
    "backbone": "test_efficientnet_gn",  # group norm: a sample's output does not depend on its batch
    "augment": "false",  # every process draws its own augmentation; without it the runs must agree
    "fc_dropout": "0",
    "batch_size": "4",
    "epochs": "2",
}


def _train_cli(paths: Paths, processes: int) -> Path:
    """Train stage1_t2 fold 0 for two epochs through the command line, under torchrun when processes > 1."""
    settings = DDP_SETTINGS
    args = ["--presets", "stage1_t2", "--profile", "smoke", "--folds", "0"]
    args += ["--data-dir", str(paths.data_dir), "--work-dir", str(paths.work_dir)]
    args += [f"--set={k}={v}" for k, v in settings.items()]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "kaggle_utils.training.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return paths.checkpoint("stage1_t2", 0, 42)


def _validation_points(paths: Paths, checkpoint: Path) -> torch.Tensor:
    """The relative keypoints (N, 10, 2) a trained localiser predicts for fold 0's validation series."""
    model, cfg, _ = load_checkpoint(checkpoint, CPU)
    _, val_set = train.datasets(paths, cfg, train.training_samples(paths, cfg), fold=0)
    task = KeypointTask(cfg, CPU)
    with torch.no_grad():
        return torch.cat([task.predict(model, batch) for batch in train.loader(val_set, cfg, train=False)])


def test_two_processes_under_torchrun_train_the_same_model_as_one(prepared: Paths, tmp_path: Path) -> None:
    one = _train_cli(_copy_work(prepared, tmp_path / "one"), processes=1)
    two = _train_cli(_copy_work(prepared, tmp_path / "two"), processes=2)
    expected, got = _weights(one), _weights(two)
    assert expected.keys() == got.keys()
    for name in expected:
        # Gradients summed across processes in another order: a weight may differ by a few 1e-5 after two epochs.
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=5e-5, msg=name)
    points = [_validation_points(prepared, checkpoint) for checkpoint in (one, two)]
    torch.testing.assert_close(points[1], points[0], rtol=0, atol=1e-5)  # what the models compute agrees too
    initial = prepare_model(preset("stage1_t2", "smoke", DDP_SETTINGS), CPU).state_dict()
    assert max(float((expected[k] - initial[k]).abs().max()) for k in expected) > 1e-3  # both runs trained
    val = [pd.read_csv(c.with_suffix(".log.csv"))["val_mean_px"].dropna().iloc[-1] for c in (one, two)]
    assert val[0] == pytest.approx(val[1], rel=1e-4)


def test_overfit_batch_drives_the_loss_down(prepared: Paths, tmp_path: Path) -> None:
    """The loop can learn: one batch, seen again and again, is fitted (the debugging switch of a training run)."""
    cfg = preset(
        "stage1_t2",
        "smoke",
        {"overfit_batch": True, "augment": False, "epochs": 20, "batch_size": 4, "eval_every": 1000},
    )
    checkpoint = _fit(_copy_work(prepared, tmp_path), cfg)
    losses = pd.read_csv(checkpoint.with_suffix(".log.csv"))["train_loss"].dropna()
    assert losses.iloc[-5:].mean() < 0.3 * losses.iloc[:3].mean()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="trains on the GPU")
@pytest.mark.parametrize("name", ["stage1_t1", "sp1"])
def test_a_gpu_trains_and_evaluates_like_the_cpu(prepared: Paths, tmp_path: Path, name: str) -> None:
    # The GPU path: batches copied on a side stream, losses read one step late, fused AdamW, autocast.
    cfg = preset(name, "smoke", {"epochs": 2, "num_workers": 2})
    gpu, cpu = (
        train.train_folds(_copy_work(prepared, tmp_path / device), cfg, [0], torch.device(device))[0]
        for device in ("cuda", "cpu")
    )
    assert gpu.metrics.keys() == cpu.metrics.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in gpu.metrics.values())
    log = pd.read_csv(gpu.checkpoint.with_suffix(".log.csv"))
    losses = log["train_loss"].dropna()
    assert len(losses) == log["step"].max() and losses.map(lambda v: torch.isfinite(torch.tensor(v))).all()


def test_a_run_without_a_training_step_leaves_the_earlier_checkpoint(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("stage1_t2", "smoke", {"fast_dev_run": True})
    checkpoint = _fit(paths, cfg)
    before = checkpoint.read_bytes()
    with pytest.raises(RuntimeError, match="no training step was made .*stage1_t2-f0-s42.pt is left as it was"):
        fit(preset("stage1_t2", "smoke", {"lr": 5e-4}), KeypointTask(cfg, CPU), [], None, checkpoint, fold=0)
    assert checkpoint.read_bytes() == before


def test_a_series_that_01_could_not_cache_is_left_out_and_named(prepared: Paths, tmp_path: Path, capsys) -> None:
    paths = _copy_work(prepared, tmp_path)
    cfg = preset("stage1_t1", "smoke")
    every = train.training_samples(paths, cfg)
    victim = every.iloc[0]
    paths.stage1_array(victim.study_id, victim.series_id).unlink()
    kept = train.training_samples(paths, cfg)
    assert len(kept) == len(every) - 1 and victim.series_id not in set(kept["series_id"])
    assert f"stage1_t1: 1 series without cached arrays are left out: {victim.series_id}" in capsys.readouterr().out


def test_a_series_with_an_estimated_point_trains_stage_2_but_not_its_localiser(prepared: Paths, tmp_path: Path) -> None:
    paths = _copy_work(prepared, tmp_path)
    keypoints = pd.read_csv(paths.table("keypoints"))
    victim = int(keypoints.loc[keypoints["view"] == "t1", "series_id"].iloc[0])
    first = keypoints.index[keypoints["series_id"] == victim][0]
    keypoints.loc[first, "source"] += ESTIMATED
    keypoints.to_csv(paths.table("keypoints"), index=False)
    assert victim not in set(train.training_samples(paths, preset("stage1_t1", "smoke"))["series_id"])
    assert victim in set(train.training_samples(paths, preset("fs", "smoke"))["series_id"])
