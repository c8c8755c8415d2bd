"""Pictures: the training curves and the noisy-label detection draw what their tables hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kaggle_utils.core.constants import LEVEL_SLUGS
from kaggle_utils.core.paths import Paths
from kaggle_utils.evaluation import viz
from kaggle_utils.io import tables


def test_curves_figure_has_the_train_loss_and_one_panel_per_validation_metric() -> None:
    log = pd.DataFrame({"step": [1, 2, 2], "train_loss": [1.0, 0.8, np.nan], "val_loss": [np.nan, np.nan, 0.9]})
    figure = viz.curves_figure(log, title="fo-f0-s42")
    assert [ax.get_title() for ax in figure.axes] == ["train loss", "val_loss"]
    np.testing.assert_array_equal(figure.axes[1].lines[0].get_ydata(), [0.9])
    plt.close(figure)


def test_noisy_label_figure_separates_flipped_labels_and_draws_the_detection_curve() -> None:
    noisy = pd.DataFrame({"row_id": ["a", "b", "c", "d"], "score": [0.1, 0.2, 0.9, 0.95]})
    curve = pd.DataFrame({"threshold": [0.5, 0.85], "precision": [0.5, 1.0], "recall": [1.0, 0.5]})
    figure = viz.noisy_label_figure(noisy, 0.85, flipped={"c", "d"}, curve=curve)
    scores, detection = figure.axes
    counts = [sum(p.get_height() for p in container) for container in scores.containers]
    assert counts == [2, 2]  # other labels, flipped labels
    assert [line.get_label() for line in detection.lines if not line.get_label().startswith("_")] == [
        "precision",
        "recall",
    ]
    plt.close(figure)
    assert len(viz.noisy_label_figure(noisy, 0.85).axes) == 1  # real data: no flips, no curve


def test_augmentation_figure_draws_stage1_keypoints_and_stage2_levels_by_row() -> None:
    rng = np.random.default_rng(0)
    frames, keypoints = rng.random((3, 16, 16)), rng.random((3, 10, 2))
    figure = viz.augmentation_figure(frames, keypoints)
    assert [ax.get_title() for ax in figure.axes] == ["no augmentation", "augmented 1", "augmented 2"]
    offsets = np.concatenate([c.get_offsets() for c in figure.axes[2].collections])
    np.testing.assert_allclose(offsets, keypoints[2] * 16)  # one colour per level, pixels of the shown frame
    plt.close(figure)

    figure = viz.augmentation_figure(rng.random((2, 5, 16, 16)))
    assert len(figure.axes) == 10 and [ax.get_ylabel() for ax in figure.axes[::5]] == ["no augmentation", "augmented 1"]
    assert [ax.get_title() for ax in figure.axes[:5]] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    plt.close(figure)


def test_a_study_drawn_without_a_series_01_could_not_cache(prepared: Paths, tmp_path: Path) -> None:
    """01's preview of a study whose T1 series failed: the T2 row is drawn, the missing array is not read."""
    work = tmp_path / "work"
    shutil.copytree(prepared.work_dir, work)
    paths = Paths(prepared.data_dir, work)
    series, keypoints = tables.load_table(paths, "series"), tables.load_table(paths, "keypoints")
    study = series.iloc[0].study_id
    t1 = series[(series["study_id"] == study) & (series["view"] == "t1")].iloc[0]
    paths.stage1_array(study, t1.series_id).unlink()
    figure = viz.draw_study(paths, series, keypoints, int(study))
    assert "Sagittal T2/STIR: middle slice" in [ax.get_title() for ax in figure.axes]
    assert "Sagittal T1: middle slice" not in [ax.get_title() for ax in figure.axes]
    plt.close(figure)


def test_the_foramina_picture_shows_one_strip_per_side_and_severity_from_the_cached_crops(prepared: Paths) -> None:
    series, targets = tables.load_table(prepared, "series"), tables.load_table(prepared, "targets")
    examples = viz.foramen_examples(prepared, series, targets, severities=(0, 1, 2))
    assert {(e.side, e.severity) for e in examples} <= {(s, k) for s in ("left", "right") for k in (0, 1, 2)}
    assert len(examples) == len({(e.side, e.severity) for e in examples}) > 0
    for example in examples:  # each one really has that label
        column = f"{example.side}_neural_foraminal_narrowing_{LEVEL_SLUGS[example.level]}"
        assert targets.set_index("study_id").loc[example.study_id, column] == example.severity
    fig = viz.foramina_figure(prepared, examples, n_frames=6, img_size=24)
    strips = [ax.get_images()[0].get_array().shape for ax in fig.axes]
    assert strips == [(24, 6 * 24)] * len(examples)
    plt.close(fig)


def test_no_foramen_is_drawn_from_a_series_without_cached_crops(prepared: Paths) -> None:
    series = tables.load_table(prepared, "series").assign(series_id=1)  # no such arrays
    assert viz.foramen_examples(prepared, series, tables.load_table(prepared, "targets")) == []
