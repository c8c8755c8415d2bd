"""Pictures people look at: a study's sagittal slices with keypoints and its level crops, training samples through
the augmentation, training curves, score tables, the series the localisers missed most, a study's axial slices
per level, and the T1 crops of a Normal/Mild and a Severe foramen per side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from kaggle_utils.core.constants import FORAMINAL_CONDITIONS, LEVEL_NAMES, LEVEL_SLUGS, SEVERITIES
from kaggle_utils.core.paths import STAGE2, Paths
from kaggle_utils.core.views import VIEWS
from kaggle_utils.inference.axial_branch import AXIAL_POINT_COLUMNS
from kaggle_utils.io.dicom import Geometry, pixel_to_world, read_geometry, read_slice, world_to_pixel
from kaggle_utils.io.frames import read_frames
from kaggle_utils.io.tables import series_points
from kaggle_utils.preprocessing.axial_levels import (
    AxialSeries,
    axial_series_table,
    match_levels,
    middle_slice,
    sagittal_level_points,
    study_axial_series,
    t2_series_with_points,
)
from kaggle_utils.preprocessing.axial_samples import points_by_level

if TYPE_CHECKING:  # viz draws what crossval gathers; it needs its types only
    from kaggle_utils.evaluation.crossval import MissedSeries

LEVEL_COLOURS = ("#e6194b", "#f58231", "#ffe119", "#3cb44b", "#4363d8")
SIDE_COLOURS = ("#42d4f4", "#f032e6")  # left, right subarticular point
AXIAL_CROP_TITLES = ("canal", "left recess", "right recess, mirrored")  # axial.CROPS, as an axial sample holds them


def study_figure(
    volumes: dict[str, np.ndarray], points: dict[str, np.ndarray], crops: dict[str, np.ndarray], title: str = ""
) -> plt.Figure:
    """One row per sagittal view: the middle slice with its 10 keypoints, then the 5 level crops (middle frame).

    Args:
        volumes: view -> stage-1 volume (N, 256, 256) uint8.
        points: view -> (5, 2, 2) relative keypoints.
        crops: view -> stage-2 crops (5, N, 256, 256) uint8.
    """
    views = [p for p in VIEWS if p in volumes]
    fig, axes = plt.subplots(len(views), 1 + len(LEVEL_NAMES), figsize=(15, 3.2 * len(views)), squeeze=False)
    for ax_row, view in zip(axes, views, strict=True):
        volume = volumes[view]
        size = volume.shape[-1]
        ax_row[0].imshow(volume[len(volume) // 2], cmap="gray")
        for level, (pair, colour) in enumerate(zip(points[view], LEVEL_COLOURS, strict=True)):
            ax_row[0].scatter(pair[:, 0] * size, pair[:, 1] * size, s=14, c=colour, label=LEVEL_NAMES[level])
        ax_row[0].set_title(f"{VIEWS[view].description}: middle slice")
        for level, ax in enumerate(ax_row[1:]):
            if view in crops:
                stack = crops[view][level]
                ax.imshow(stack[len(stack) // 2], cmap="gray")
            ax.set_title(LEVEL_NAMES[level], color=LEVEL_COLOURS[level])
        for ax in ax_row:
            ax.axis("off")
    axes[0, 0].legend(loc="lower left", fontsize=6, framealpha=0.5)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_study(
    paths: Paths, series: pd.DataFrame, keypoints: pd.DataFrame, study_id: int, crops_root: str = STAGE2
) -> plt.Figure:
    """``study_figure`` of a study from the cached arrays and a keypoint table."""
    volumes, points, crops = {}, {}, {}
    with_points = set(keypoints["series_id"])
    for row in series[series["study_id"] == study_id].itertuples():
        volume_path = paths.stage1_array(study_id, row.series_id)
        if row.view in volumes or row.series_id not in with_points or not volume_path.exists():
            continue  # one series per view, with keypoints, that 01 could cache
        volumes[row.view] = np.load(volume_path)
        points[row.view] = series_points(keypoints, row.series_id)
        crop_path = paths.stage2_array(study_id, row.series_id, crops_root)
        if crop_path.exists():
            crops[row.view] = np.load(crop_path)
    return study_figure(volumes, points, crops, title=f"study {study_id}")


def augmentation_figure(images: np.ndarray, keypoints: np.ndarray | None = None, title: str = "") -> plt.Figure:
    """Views of one training sample as the model sees them: the first without augmentation, then augmented.

    Args:
        images: (V, S, S) the middle frame of each draw (stage 1), or (V, 5, S, S) the middle frame of each level
            (stage 2: one row per draw, so the levels of a draw are seen to share their geometry), or (V, 3, S, S)
            of each crop of an axial level, in [0, 1].
        keypoints: (V, 10, 2) relative keypoints of the stage-1 views, coloured by level.
    """
    per_level = images.ndim == 4
    draws = len(images)
    rows, columns = (draws, images.shape[1]) if per_level else (1, draws)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for draw in range(draws):
        name = f"augmented {draw}" if draw else "no augmentation"
        if per_level:
            panels = list(zip(axes[draw], images[draw], strict=True))
            axes[draw, 0].set_ylabel(name)
        else:
            panels = [(axes[0, draw], images[draw])]
            axes[0, draw].set_title(name)
        for ax, image in panels:
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if keypoints is not None:
            pixels = keypoints[draw].reshape(-1, 2, 2) * images.shape[-1]  # a pair per level (one: an axial sample)
            for pair, colour in zip(pixels, LEVEL_COLOURS[: len(pixels)], strict=True):
                axes[0, draw].scatter(pair[:, 0], pair[:, 1], s=10, c=colour)
    if per_level and columns == len(LEVEL_NAMES):
        for ax, name, colour in zip(axes[0], LEVEL_NAMES, LEVEL_COLOURS, strict=True):
            ax.set_title(name, color=colour)
    elif per_level:
        for ax, name in zip(axes[0], AXIAL_CROP_TITLES, strict=True):
            ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def curves_figure(log: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss per step and every validation metric of a ``CurveLog`` CSV."""
    val_columns = [c for c in log.columns if c.startswith("val_")]
    fig, axes = plt.subplots(1, 1 + len(val_columns), figsize=(4 * (1 + len(val_columns)), 3), squeeze=False)
    axes[0, 0].plot(log["step"], log["train_loss"], lw=0.8)
    axes[0, 0].set_title("train loss")
    for ax, column in zip(axes[0, 1:], val_columns, strict=True):
        points = log[["step", column]].dropna()
        ax.plot(points["step"], points[column], marker="o")
        ax.set_title(column)
    for ax in axes[0]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def noisy_label_figure(
    noisy: pd.DataFrame, threshold: float, flipped: set[str] | None = None, curve: pd.DataFrame | None = None
) -> plt.Figure:
    """Noisy-label detection at a glance: the disagreement scores (flipped labels apart, when known) with the
    threshold, and precision and recall by threshold when a detection curve is given.

    Args:
        noisy: the noisy-label table (``row_id``, ``score``).
        threshold: the threshold in use, drawn as a line.
        flipped: row ids of labels known to be flipped (synthetic data).
        curve: ``denoise.detection_curve`` output (``threshold``, ``precision``, ``recall``).
    """
    fig, axes = plt.subplots(
        1, 1 if curve is None else 2, figsize=(11 if curve is not None else 5.5, 3.2), squeeze=False
    )
    ax = axes[0, 0]
    bins = np.linspace(0, 1, 41)
    if flipped:
        is_flipped = noisy["row_id"].isin(flipped)
        ax.hist(noisy.loc[~is_flipped, "score"], bins=bins, alpha=0.7, label="other labels")
        ax.hist(noisy.loc[is_flipped, "score"], bins=bins, alpha=0.7, label="flipped labels")
        ax.legend()
    else:
        ax.hist(noisy["score"], bins=bins)
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.set(xlabel="score = 1 - p(label)", ylabel="labels", yscale="log", title="disagreement with the OOF ensemble")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())  # 10, 100 rather than 10^1, 10^2
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if curve is not None:
        ax = axes[0, 1]
        for column in ("precision", "recall"):
            ax.plot(curve["threshold"], curve[column], marker="o", label=column)
        ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set(xlabel="threshold", ylim=(0, 1.02), title="detection of the flipped labels")
        ax.legend()
    fig.tight_layout()
    return fig


def localisation_figure(cases: list[MissedSeries]) -> plt.Figure:
    """Two rows per missed series (``crossval.worst_localised``): the middle slice with the predicted (x) and true
    (o) keypoints, then the five level crops from the predicted keypoints; below, the crops from the true ones."""
    fig, axes = plt.subplots(2 * len(cases), 1 + len(LEVEL_NAMES), figsize=(15, 5.6 * len(cases)), squeeze=False)
    for case, top, bottom in zip(cases, axes[0::2], axes[1::2], strict=True):
        size = case.middle_slice.shape[-1]
        top[0].imshow(case.middle_slice, cmap="gray")
        for level, colour in enumerate(LEVEL_COLOURS):
            for points, marker in ((case.predicted, "x"), (case.true, "o")):
                pair = points[level] * size
                top[0].scatter(pair[:, 0], pair[:, 1], s=22, c=colour, marker=marker)
        top[0].set_title("middle slice", fontsize=9)
        legend = "crops from the predicted\nkeypoints (x) above,\nfrom the true ones (o)\nbelow"
        bottom[0].text(0.5, 0.5, f"{case.title}\n\n{legend}", ha="center", va="center", fontsize=9)
        for row, crops in ((top, case.predicted_crops), (bottom, case.true_crops)):
            for level, ax in enumerate(row[1:]):
                ax.imshow(crops[level], cmap="gray")
                ax.set_title(LEVEL_NAMES[level], color=LEVEL_COLOURS[level], fontsize=9)
        for ax in (*top, *bottom):
            ax.axis("off")
    fig.tight_layout()
    return fig


def _grey(ax: plt.Axes, image: np.ndarray) -> None:
    low, high = np.percentile(image, (1, 99.5))
    ax.imshow(image, cmap="gray", vmin=low, vmax=high)
    ax.axis("off")


def axial_levels_figure(picture: LevelPicture) -> plt.Figure:
    """The middle Sagittal T2 slice with each axial slice plane across it (coloured by the level it is assigned
    to, grey when none) and the level points, then each level's assigned axial slice with the point projected
    (+), and where the picture has them the true (o) and predicted (x) left and right subarticular points."""
    fig, axes = plt.subplots(1, 1 + len(LEVEL_NAMES), figsize=(18, 3.8))
    _grey(axes[0], picture.sagittal)
    for level, segment in sorted(picture.planes, key=lambda plane: plane[0]):
        colour, width = (LEVEL_COLOURS[level], 1.6) if level >= 0 else ("0.7", 0.6)
        axes[0].plot(segment[:, 0], segment[:, 1], color=colour, lw=width)
    for level, (x, y) in enumerate(picture.points):
        axes[0].scatter(x, y, s=18, c=LEVEL_COLOURS[level], edgecolors="k", linewidths=0.5, zorder=3)
    axes[0].set_title("Sagittal T2 middle slice, axial planes", fontsize=9)
    for level, ax in enumerate(axes[1:]):
        ax.set_title(LEVEL_NAMES[level], color=LEVEL_COLOURS[level], fontsize=9)
        if level not in picture.slices:
            ax.text(0.5, 0.5, "no axial slice\nwithin reach", ha="center", va="center", fontsize=9)
            ax.axis("off")
            continue
        image, (x, y), caption = picture.slices[level]
        _grey(ax, image)
        ax.scatter([x], [y], s=40, marker="+", c=LEVEL_COLOURS[level])
        if level in picture.true_points:
            ax.scatter(*picture.true_points[level].T, s=36, facecolors="none", edgecolors=SIDE_COLOURS)
        if level in picture.predicted_points:
            ax.scatter(*picture.predicted_points[level].T, s=30, marker="x", c=SIDE_COLOURS)
        ax.set_title(f"{LEVEL_NAMES[level]}\n{caption}", color=LEVEL_COLOURS[level], fontsize=8)
    fig.suptitle(picture.title)
    fig.tight_layout()
    return fig


# --- the axial levels of a study ---------------------------------------------------------------------------
@dataclass
class LevelPicture:
    """What ``axial_levels_figure`` draws for one study (``level_picture`` gathers it)."""

    title: str
    sagittal: np.ndarray  # middle Sagittal T2 slice, float
    points: np.ndarray  # (5, 2) pixel x, y of each level's back-of-disc point on it
    planes: list[tuple[int, np.ndarray]]  # (level or -1, (2, 2) segment end points) of each axial slice, pixels
    slices: dict[int, tuple[np.ndarray, tuple[float, float], str]]  # level -> (assigned slice, point on it, caption)
    # level -> (2, 2) pixel x, y of the left and right subarticular points on its slice: the true ones (the level's
    # localiser sample) and the axial localisers' (an inference run's ``Prediction.axial_points``), where known
    true_points: dict[int, np.ndarray] = field(default_factory=dict)
    predicted_points: dict[int, np.ndarray] = field(default_factory=dict)


def plane_segment(series: AxialSeries, k: int, sagittal: Geometry, s: int, samples: int = 96) -> np.ndarray | None:
    """(2, 2) end points, in pixels of sagittal slice s, of where axial slice k crosses it inside both images."""
    g = sagittal
    normal = series.normals[k]
    rows, cols = g.shapes[s]
    row_dir, col_dir = g.orientations[s, :3] * g.pixel_spacing[s, 1], g.orientations[s, 3:] * g.pixel_spacing[s, 0]
    along_col = normal @ col_dir
    if abs(along_col) < 1e-6:
        return None  # the planes are parallel
    x = np.linspace(0, cols - 1, samples)
    y = -(normal @ (g.positions[s] - series.geometry.positions[k]) + x * (normal @ row_dir)) / along_col
    world = pixel_to_world(g.positions[s], g.orientations[s], g.pixel_spacing[s], x, y)
    inside = np.array([series.inside(k, series.pixel(k, w)) for w in world]) & (y >= 0) & (y < rows)
    if not inside.any():
        return None
    first, last = np.flatnonzero(inside)[[0, -1]]
    return np.array([[x[first], y[first]], [x[last], y[last]]])


def level_picture(
    paths: Paths,
    split: str,
    study_id: int,
    sagittal: pd.DataFrame,
    keypoints: pd.DataFrame,
    max_distance_mm: float,
    samples: pd.DataFrame | None = None,
    predicted: pd.DataFrame | None = None,
) -> LevelPicture:
    """The middle Sagittal T2 slice with every axial slice plane drawn across it, coloured by assigned level, and
    each level's assigned axial slice with the level's point projected onto it (arguments as ``build_level_table``);
    with ``samples`` (``axial_keypoints``) the true subarticular points, with ``predicted`` (``Prediction.
    axial_points``) the axial localisers' ones, on the slices that show them."""
    candidates = t2_series_with_points(sagittal, keypoints).get(study_id, [])
    if not candidates:
        raise ValueError(f"study {study_id} has no Sagittal T2 series with keypoints to place its levels")
    t2_series_id = candidates[0]
    geometry = read_geometry(paths.series_dir(split, study_id, t2_series_id))
    points = sagittal_level_points(series_points(keypoints, t2_series_id), geometry)
    s = middle_slice(geometry)
    on_sagittal = world_to_pixel(geometry.positions[s], geometry.orientations[s], geometry.pixel_spacing[s], points)
    series_ids = axial_series_table(paths, split).query("study_id == @study_id")["series_id"].tolist()
    planes, slices, shown = [], {}, {}
    for series in study_axial_series(paths, split, study_id, series_ids):
        matches = [m for m in match_levels(points, series, max_distance_mm) if m.assigned]
        level_of = {m.slice: m.level_index for m in matches}
        for k in range(len(series)):
            segment = plane_segment(series, k, geometry, s)
            if segment is not None:
                planes.append((level_of.get(k, -1), segment))
        for m in matches:
            if m.level_index not in slices:
                image = read_slice(series.geometry.files[m.slice])
                caption = f"series {series.series_id} #{series.instance_numbers[m.slice]}, {m.distance_mm:+.1f} mm"
                slices[m.level_index] = (image, m.xy, caption)
                shown[m.level_index] = (series.series_id, int(series.instance_numbers[m.slice]), image.shape)
    picture = LevelPicture(
        f"study {study_id}: axial slices per level", read_slice(geometry.files[s]), on_sagittal, planes, slices
    )
    for level, (series_id, instance, shape) in shown.items():
        scale = np.array([shape[1], shape[0]])  # relative x by columns, y by rows
        if samples is not None:
            true = points_by_level(samples[samples["instance_number"] == instance]).get((series_id, LEVEL_NAMES[level]))
            if true is not None:
                picture.true_points[level] = true * scale
        if predicted is not None:
            rows = predicted[(predicted["series_id"] == series_id) & (predicted["instance_number"] == instance)]
            if len(rows):
                picture.predicted_points[level] = (
                    rows[list(AXIAL_POINT_COLUMNS)].to_numpy(float)[0].reshape(2, 2) * scale
                )
    return picture


# --- foramina -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForamenExample:
    """One labelled foramen: its study's T1 series, the level (``LEVEL_SLUGS`` index), side and severity index."""

    study_id: int
    series_id: int
    level: int
    side: str  # "left" or "right"
    severity: int


def foramen_examples(
    paths: Paths, series: pd.DataFrame, targets: pd.DataFrame, severities: tuple[int, ...] = (0, 2)
) -> list[ForamenExample]:
    """The first labelled foramen of each side and severity (default Normal/Mild and Severe) among the studies with
    cached Sagittal T1 crops, in study order: the examples :func:`foramina_figure` shows."""
    t1 = series[series["view"] == "t1"].drop_duplicates("study_id")
    pairs = zip(t1["study_id"], t1["series_id"], strict=True)
    cached = [paths.stage2_array(int(study), int(series), STAGE2).exists() for study, series in pairs]
    t1 = t1[cached].set_index("study_id")["series_id"]
    labelled = targets[targets["study_id"].isin(t1.index)].sort_values("study_id")
    examples = []
    for condition in FORAMINAL_CONDITIONS:
        side = condition.split("_")[0]
        for severity in severities:
            for level, slug in enumerate(LEVEL_SLUGS):
                hits = labelled.loc[labelled[f"{condition}_{slug}"] == severity, "study_id"]
                if len(hits):
                    study = int(hits.iloc[0])
                    examples.append(ForamenExample(study, int(t1[study]), level, side, severity))
                    break
    return examples


def foramina_figure(paths: Paths, examples: list[ForamenExample], n_frames: int, img_size: int) -> plt.Figure:
    """Each example's level crop on every frame a T1 model reads, left to right as the model sees them (index 0 is
    the patient's left, resized to ``img_size``), one strip per example: the narrowing shows on its side's lateral
    frames or nowhere."""
    fig, axes = plt.subplots(len(examples), 1, figsize=(n_frames * 0.8, len(examples) * 1.0), squeeze=False)
    for ax, example in zip(axes[:, 0], examples, strict=True):
        path = paths.stage2_array(example.study_id, example.series_id, STAGE2)
        frames = np.zeros((5, n_frames, *np.load(path, mmap_mode="r").shape[-2:]), np.uint8)
        read_frames(path, n_frames, frames)
        strip = np.concatenate([cv2.resize(frame, (img_size, img_size)) for frame in frames[example.level]], axis=1)
        _grey(ax, strip)
        ax.axvline(n_frames // 2 * img_size - 0.5, color=SIDE_COLOURS[1], linewidth=1.5)  # the halves' border
        ax.set_title(
            f"{example.side} {LEVEL_NAMES[example.level]} {SEVERITIES[example.severity]} (study {example.study_id})",
            fontsize=8,
            loc="left",
        )
    fig.suptitle("T1 level crops per frame, patient left to right; the line parts the two sides' halves", fontsize=9)
    fig.tight_layout()
    return fig
