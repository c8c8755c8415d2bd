"""The training benchmark runs end to end on the CPU and reports what it measured, against its targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kaggle_utils.core.presets import preset
from kaggle_utils.dev import bench_arrays, bench_train


def test_cached_arrays_have_the_real_shapes_and_feed_both_stages(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=2, n_slices=5)
    assert np.load(data.paths.stage2_array(1, 11)).shape == (5, 5, 256, 256)
    for name, shape in (("stage1_t1", (2, 8, 256, 256)), ("su", (2, 5, 8, 256, 256))):
        cfg = preset(name, "smoke", {"batch_size": 2})
        batch = data.first_batch(cfg, torch.device("cpu"))
        assert tuple(batch["image"].shape) == shape


def test_the_table_has_a_row_per_preset_with_ratios_and_verdicts(capsys) -> None:
    rows = bench_train.main(
        ["--presets", "sp2", "stage1_t2", "--steps", "1", "--warmup", "0", "--workers", "0", "--studies", "4"]
        + ["--host-batches", "1"]
    )
    assert [r.preset for r in rows] == ["sp2", "stage1_t2"]
    assert all(r.compute_ms > 0 and r.pure_ms > 0 and r.loader_ms > 0 and r.seed_ms > 0 for r in rows)
    assert rows[0].seed_source == "our model, seed settings"  # no GPU: the seed's script is not run
    assert rows[0].target == 0.6 and bench_train.Row("fo", "", 1, 1, 1, 2, "", None).target == 0.5
    table = capsys.readouterr().out
    assert all(column in table for column in ("seed ms", "step ms", "pure ms", "augment", "overhead"))
    assert table.count("sp2 ") >= 3
    host = table.split("host side of loading")[1]
    assert "32 x 5 x 5 x 256 x 256" in host and "32 x 8 x 256 x 256" in host  # the full presets' batches


def test_overheads_are_over_the_pure_compute_step() -> None:
    # loading plus augmentation against the step without augmentation, as the speed target defines it
    row = bench_train.Row(
        "su", "", compute_ms=105, pure_ms=100, loader_ms=112, seed_ms=300, seed_source="", peak_gb=None
    )
    assert row.ratio == pytest.approx(0.35) and row.augment_overhead == pytest.approx(0.05)
    assert row.loader_overhead == pytest.approx(0.12)


def test_the_host_fill_writes_every_sample_of_the_batch(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=3, n_slices=5)
    cfg = preset("stage1_t1", "smoke", {"batch_size": 4, "num_workers": 2})
    batches = bench_train.loader(data.training_set(cfg), cfg, train=True)
    ms, shape = bench_train.host_fill_ms(batches, 4, repeats=2)
    image = np.zeros(shape, np.uint8)
    batches.fill([0, 1, 2, 0], image)
    batches.close()
    assert ms > 0 and shape == (4, cfg.n_frames, 256, 256)
    assert all(image[row].any() for row in range(4))  # random volumes: every row was written


def test_studies_beyond_the_distinct_ones_share_their_arrays(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=5, n_slices=3, distinct=2)
    assert data.series["view"].value_counts().to_dict() == {"axial": 5 * 5, "t1": 5, "t2": 5}  # 5 levels an axial
    for study, twin in ((3, 1), (4, 2), (5, 1)):
        for view in (0, 1):
            ours = np.load(data.paths.stage2_array(study, 10 * study + view))
            np.testing.assert_array_equal(ours, np.load(data.paths.stage2_array(twin, 10 * twin + view)))
        stack = data.paths.axial_stack(study, 10 * study + 2, "l4_l5", bench_arrays.AXIAL_INSTANCE)
        twin_stack = data.paths.axial_stack(twin, 10 * twin + 2, "l4_l5", bench_arrays.AXIAL_INSTANCE)
        np.testing.assert_array_equal(np.load(stack), np.load(twin_stack))
    assert not np.array_equal(np.load(data.paths.stage1_array(1, 10)), np.load(data.paths.stage1_array(2, 20)))


def test_the_axial_localiser_is_fed_a_levels_stack(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=2, n_slices=3)
    cfg = preset("stage1_axial", "smoke", {"batch_size": 4, "num_workers": 0})
    batch = data.first_batch(cfg, torch.device("cpu"))
    assert tuple(batch["image"].shape) == (4, cfg.n_frames, 256, 256) and batch["mask"].all()
    assert set(batch["level_index"].tolist()) <= set(range(5))


def test_the_axial_classifier_is_fed_a_levels_three_crops(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=2, n_slices=3)
    cfg = preset("ax", "smoke", {"batch_size": 4, "num_workers": 0})
    batch = data.first_batch(cfg, torch.device("cpu"))
    assert tuple(batch["image"].shape) == (4, 3, cfg.n_frames, 256, 256)
    assert tuple(batch["target"].shape) == (4, 1, 3, 3)
    row = bench_train.bench_preset(cfg, data, torch.device("cpu"), None, steps=1, warmup=0)
    assert row.shape == f"4 x 3 x {cfg.n_frames} x {cfg.img_size}px" and row.compute_ms > 0


def test_the_loader_timing_asks_for_one_epoch_of_batches(tmp_path: Path) -> None:
    data = bench_arrays.CachedArrays.write(tmp_path, n_studies=4, n_slices=3)
    cfg = preset("stage1_t1", "smoke", {"batch_size": 2, "num_workers": 0})
    batches = bench_train.loader(data.training_set(cfg), cfg, train=True)
    with pytest.raises(ValueError, match=r"has 2 batches; the loader timing needs 3 \(raise --studies"):
        bench_train.loader_ms(lambda batch: None, batches, torch.device("cpu"), steps=2, warmup=1)
    assert bench_train.loader_ms(lambda batch: None, batches, torch.device("cpu"), steps=1, warmup=1) >= 0
