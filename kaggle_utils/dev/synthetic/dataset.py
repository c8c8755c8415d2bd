"""The dataset: severities drawn from shared latents, the label rows and their optional flips, one study
drawn, rendered and written by ``make_study`` (in a worker process), and ``make_dataset``, which writes all
studies and the competition CSV files (plus ``label_flips.csv`` with label noise) to a folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from kaggle_utils.core.constants import (
    AXIAL_T2,
    CONDITION_TITLES,
    CONDITIONS,
    EXCLUDED_SERIES,
    EXCLUDED_STUDIES,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVEL_SLUGS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    condition_family,
    row_id,
)
from kaggle_utils.core.paths import (
    COORDS_V7_CSV,
    LABEL_FLIPS_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
    Paths,
)
from kaggle_utils.dev.synthetic.acquisition import (
    STRAY_LOCALISER,
    AxialCoverage,
    SeriesPlan,
    axial_coverage,
    axial_plan,
    sagittal_plan,
    with_stray_localiser,
    write_series,
)
from kaggle_utils.dev.synthetic.anatomy import (
    FORAMINAL,
    LABEL_SERIES,
    LABELLED_DISCS,
    LEFT,
    RIGHT,
    SPINAL,
    SUBARTICULAR,
    Phantom,
    condition_side,
    draw_phantom,
)

TRAIN, TEST = SPLITS = ("train", "test")  # the ``{split}_images`` folders

# --- severity model -------------------------------------------------------------------------------------
_LEVEL_PROPENSITY = np.array([-1.15, -0.8, -0.35, 0.45, 0.3])  # L4/L5 and L5/S1 degenerate most
_FAMILY_PROPENSITY = {SPINAL: -0.1, FORAMINAL: 0.0, SUBARTICULAR: 0.1}
_SEVERITY_THRESHOLDS = np.array([0.19, 1.09])  # score cut-offs giving ~65 / 22 / 13 %
_MISSING_STUDY_FRACTION = 0.25  # studies with a few unlabelled cells; ~2 cells each -> ~2% of all cells


# ==========================================================================================================
# Labels and tables
# ==========================================================================================================
def draw_severities(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Severity class per (condition, level) and per-level disc degeneration 0..1 from shared latents.

    One study factor and one factor per level feed every condition, and one factor per (side, level)
    feeds both foraminal and subarticular of that side, so the labels correlate like real ones do.
    """
    study = rng.normal()
    level = _LEVEL_PROPENSITY + 0.5 * rng.normal(size=len(LEVEL_SLUGS))
    side = 0.35 * rng.normal(size=(2, len(LEVEL_SLUGS)))
    score = 0.75 * study + level[None, :] + 0.45 * rng.normal(size=(len(CONDITIONS), len(LEVEL_SLUGS)))
    for c, condition in enumerate(CONDITIONS):
        family = condition_family(condition)
        score[c] += _FAMILY_PROPENSITY[family] + (0.0 if family == SPINAL else side[condition_side(condition)])
    degeneration = 1 / (1 + np.exp(-(0.75 * study + level) * 1.5))
    return np.digitize(score, _SEVERITY_THRESHOLDS), degeneration


def _label_row(study_id: int, codes: np.ndarray, missing: np.ndarray) -> dict:
    # codes and missing are (condition, level) arrays: raveled they follow LABEL_COLUMNS (condition-major).
    cells = zip(LABEL_COLUMNS, codes.ravel(), missing.ravel(), strict=True)
    return {"study_id": study_id, **{column: None if gap else SEVERITIES[code] for column, code, gap in cells}}


def _missing_cells(rng: np.random.Generator) -> np.ndarray:
    missing = np.zeros((len(CONDITIONS), len(LEVEL_SLUGS)), dtype=bool)
    if rng.random() < _MISSING_STUDY_FRACTION:
        cells = rng.choice(missing.size, size=int(rng.integers(1, 4)), replace=False)
        missing.flat[cells] = True
    return missing


def flip_labels(labels: pd.DataFrame, fraction: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``labels`` (``study_id`` + label columns of severity names) with ``round(fraction * labelled cells)`` cells,
    drawn without replacement, changed to one of the two other severities; and the table of those flips
    (``study_id, row_id, condition, level, true, given``) in row-id order. Missing cells are never touched."""
    values = labels[list(LABEL_COLUMNS)].to_numpy(dtype=object)
    labelled = np.flatnonzero(pd.notna(values).ravel())
    chosen = np.sort(rng.choice(labelled, size=int(round(fraction * len(labelled))), replace=False))
    flips = []
    for cell in chosen:
        r, c = divmod(int(cell), len(LABEL_COLUMNS))
        true = values[r, c]
        given = SEVERITIES[(SEVERITIES.index(true) + int(rng.integers(1, len(SEVERITIES)))) % len(SEVERITIES)]
        values[r, c] = given
        condition, level = (
            CONDITIONS[c // len(LEVEL_SLUGS)],
            LEVEL_SLUGS[c % len(LEVEL_SLUGS)],
        )  # LABEL_COLUMNS is condition-major
        study_id = int(labels["study_id"].iloc[r])
        flips.append((study_id, row_id(study_id, LABEL_COLUMNS[c]), condition, level, true, given))
    noisy = labels.copy()
    noisy[list(LABEL_COLUMNS)] = values
    table = pd.DataFrame(flips, columns=["study_id", "row_id", "condition", "level", "true", "given"])
    return noisy, table.sort_values("row_id", ignore_index=True)


@dataclass
class StudyTask:
    """Everything a worker needs to write one study; the seed sequence makes it order-independent."""

    out_dir: Path
    split: str
    study_id: int
    series_ids: dict[str, int]  # description -> series id, only the series to write
    spare_axial_ids: tuple[int, ...]  # ids of a second and third axial series, when the study has them
    seed: int
    seed_sequence: np.random.SeedSequence
    showcase: str = ""  # one of SHOWCASES: this study has that rare pattern for sure


SHOWCASES = ("two_passes", "parallel_slabs", "stray_localiser")
"""Rare patterns of the competition's data that the first training studies carry for sure (each is also drawn at
about its real rate elsewhere), so that even the tests' few studies have each: two axial passes with the left
points on one series and the right on the other; upper axial slabs sharing one orientation; a localiser stored as
the first instance of the Sagittal T2 series."""


@dataclass
class StudyRecord:
    """Rows one study contributes to the CSV files."""

    label: dict
    series: list[dict] = field(default_factory=list)
    coordinates: list[dict] = field(default_factory=list)
    corrected: list[dict] = field(default_factory=list)


_NEIGHBOUR_SLICE = 0.35  # a level's left and right points are one slice apart (else on the same slice)


def _coordinate_row(study_id: int, plan: SeriesPlan, k: int, world: np.ndarray, condition: str, lv: int) -> dict:
    instance, x, y = plan.point_on(k, world)
    return {
        "study_id": study_id,
        "series_id": plan.series_id,
        "instance_number": instance,
        "condition": CONDITION_TITLES[condition],
        "level": LEVEL_NAMES[lv],
        "x": round(x, 4),
        "y": round(y, 4),
    }


def _subarticular_slices(rng: np.random.Generator, plan: SeriesPlan, ph: Phantom, lv: int) -> dict[int, int]:
    """Side -> slice index of a level's points: the slice nearest each, or one apart in the same block."""
    disc = LABELLED_DISCS[lv]
    slices = {side: plan.nearest_slice(ph.recess_centre(disc, side)) for side in (LEFT, RIGHT)}
    if rng.random() < _NEIGHBOUR_SLICE:
        side = LEFT if rng.random() < 0.5 else RIGHT
        k = slices[side]
        step = 1 if rng.random() < 0.5 else -1
        for candidate in (k + step, k - step):
            if 0 <= candidate < len(plan.blocks) and plan.blocks[candidate] == plan.blocks[k]:
                slices[side] = candidate
                break
    return slices


def _label_coordinates(
    study_id: int,
    ph: Phantom,
    plans: dict[str, SeriesPlan],
    axial: list[tuple[SeriesPlan, AxialCoverage]],
    missing: np.ndarray,
    rng: np.random.Generator,
) -> list[dict]:
    """Competition-style points: spinal on the T2, foraminal on the T1, subarticular on the axial series that
    carries that level and side."""
    rows = []
    for c, condition in enumerate(CONDITIONS):
        if condition_family(condition) == SUBARTICULAR:
            continue
        plan = plans[LABEL_SERIES[condition_family(condition)]]
        for lv, disc in enumerate(LABELLED_DISCS):
            if not missing[c, lv]:
                world = ph.label_point(condition, disc)
                rows.append(_coordinate_row(study_id, plan, plan.nearest_slice(world), world, condition, lv))
    subarticular = {condition_side(c): c for c in CONDITIONS if condition_family(c) == SUBARTICULAR}
    for plan, coverage in axial:
        for lv, sides in coverage.sides.items():
            slices = _subarticular_slices(rng, plan, ph, lv)
            for side in sides:
                condition = subarticular[side]
                if not missing[CONDITIONS.index(condition), lv]:
                    world = ph.recess_centre(LABELLED_DISCS[lv], side)
                    rows.append(_coordinate_row(study_id, plan, slices[side], world, condition, lv))
    return rows


def _uncovered_subarticular(axial: list[AxialCoverage]) -> np.ndarray:
    """(condition, level) cells of subarticular points no axial series carries: unlabelled, as in the
    competition, where a missing point means a missing grade."""
    uncovered = np.zeros((len(CONDITIONS), len(LEVEL_SLUGS)), dtype=bool)
    for c, condition in enumerate(CONDITIONS):
        if condition_family(condition) == SUBARTICULAR:
            side = condition_side(condition)
            carried = {lv for coverage in axial for lv, sides in coverage.sides.items() if side in sides}
            uncovered[c] = [lv not in carried for lv in range(len(LEVEL_SLUGS))]
    return uncovered


def _corrected_coordinates(study_id: int, ph: Phantom, plans: dict[str, SeriesPlan]) -> list[dict]:
    """Two points per level per sagittal series: T1 left/right foramen, T2 front/back of the disc."""
    rows = []
    for description in (SAGITTAL_T1, SAGITTAL_T2):
        plan = plans[description]
        for lv, disc in enumerate(LABELLED_DISCS):
            if description == SAGITTAL_T1:
                points = {"L": ph.foramen_centre(disc, LEFT), "R": ph.foramen_centre(disc, RIGHT)}
            else:
                points = {"L": ph.disc_edge(disc, posterior=False), "R": ph.disc_edge(disc, posterior=True)}
            for side, world in points.items():
                _, x, y = plan.project(world)
                rows.append(
                    {
                        "study_id": study_id,
                        "series_id": plan.series_id,
                        "level": LEVEL_NAMES[lv],
                        "side": side,
                        "relative_x": round(x / plan.cols, 6),
                        "relative_y": round(y / plan.rows, 6),
                    }
                )
    return rows


def make_study(task: StudyTask) -> StudyRecord:
    """Draw, render and write one study; return its CSV rows."""
    label_rng, anatomy_rng, plan_rng, noise_rng = (np.random.default_rng(s) for s in task.seed_sequence.spawn(4))
    codes, degeneration = draw_severities(label_rng)
    missing = _missing_cells(label_rng)
    ph = draw_phantom(anatomy_rng, codes, degeneration)
    all_ids = task.series_ids
    plans = {
        SAGITTAL_T1: sagittal_plan(plan_rng, ph, all_ids.get(SAGITTAL_T1, 0), SAGITTAL_T1, 1),
        SAGITTAL_T2: sagittal_plan(plan_rng, ph, all_ids.get(SAGITTAL_T2, 0), SAGITTAL_T2, 2),
    }
    for description, plan in plans.items():
        stray = plan_rng.random() < STRAY_LOCALISER
        if stray or (task.showcase == "stray_localiser" and description == SAGITTAL_T2):
            plans[description] = with_stray_localiser(plan_rng, plan)
    # Axial series are drawn after the sagittal ones, from the same stream, so the sagittal series of a seed
    # do not depend on how the axial ones are laid out.
    showcase = {"two_passes": {"two_passes": True}, "parallel_slabs": {"n": 1}}.get(task.showcase, {})
    coverage = axial_coverage(plan_rng, **showcase) if AXIAL_T2 in all_ids else []
    axial_ids = (all_ids.get(AXIAL_T2, 0), *task.spare_axial_ids)
    parallel = task.showcase == "parallel_slabs"
    axial = [
        (axial_plan(plan_rng, ph, series_id, 3 + i, c.levels, parallel_slabs=parallel), c)
        for i, (series_id, c) in enumerate(zip(axial_ids, coverage, strict=False))
    ]
    missing |= _uncovered_subarticular(coverage)
    record = StudyRecord(label=_label_row(task.study_id, codes, missing))
    written = [plans[d] for d in (SAGITTAL_T1, SAGITTAL_T2) if d in all_ids] + [plan for plan, _ in axial]
    for plan in written:
        folder = Paths(task.out_dir, task.out_dir).series_dir(task.split, task.study_id, plan.series_id)
        write_series(folder, plan, ph, task.study_id, task.seed, noise_rng)
        record.series.append(
            {"study_id": task.study_id, "series_id": plan.series_id, "series_description": plan.description}
        )
    if task.split == TRAIN:
        record.coordinates = _label_coordinates(task.study_id, ph, plans, axial, missing, plan_rng)
        record.corrected = _corrected_coordinates(task.study_id, ph, plans)
    return record


# ==========================================================================================================
# Dataset
# ==========================================================================================================
OUTPUT_FILES = (
    TRAIN_CSV,
    TRAIN_SERIES_CSV,
    TEST_SERIES_CSV,
    TRAIN_COORDINATES_CSV,
    COORDS_V7_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_LABELS_CSV,
    LABEL_FLIPS_CSV,
)


def _distinct_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct 7-10 digit ids that are not on the exclusion lists."""
    taken = set(EXCLUDED_SERIES) | set(EXCLUDED_STUDIES)
    ids: list[int] = []
    while len(ids) < n:
        candidate = int(rng.integers(10**6, 10**10))
        if candidate not in taken:
            taken.add(candidate)
            ids.append(candidate)
    return ids


_IDS_PER_STUDY = 6


def _tasks(out_dir: Path, n_train: int, n_test: int, seed: int, missing_series_fraction: float) -> list[StudyTask]:
    # Study i always gets ids[6i : 6i + 6] (study, T1, T2, up to three axial series) and the i-th spawned seed,
    # so a smaller dataset with the same seed starts with exactly the same studies, byte for byte.
    n = n_train + n_test
    ids = _distinct_ids(np.random.default_rng(seed), _IDS_PER_STUDY * n)
    sequences = np.random.SeedSequence(seed).spawn(n)
    drop_rng = np.random.default_rng([seed, 1])
    tasks = []
    for i in range(n):
        split = TRAIN if i < n_train else TEST
        first = _IDS_PER_STUDY * i
        series = dict(zip(SERIES_DESCRIPTIONS, ids[first + 1 : first + 4], strict=True))
        if split == TEST and drop_rng.random() < missing_series_fraction:
            del series[(SAGITTAL_T1, SAGITTAL_T2)[int(drop_rng.integers(2))]]
        spare = tuple(ids[first + 4 : first + _IDS_PER_STUDY])
        showcase = SHOWCASES[i] if i < min(n_train, len(SHOWCASES)) else ""
        tasks.append(StudyTask(out_dir, split, ids[first], series, spare, seed, sequences[i], showcase))
    return tasks


def _clear_previous(out_dir: Path) -> None:
    """Remove what an earlier run wrote here (and only that), so stale studies cannot linger."""
    for split in SPLITS:
        shutil.rmtree(Paths(out_dir, out_dir).images_dir(split), ignore_errors=True)
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _run(tasks: list[StudyTask], workers: int, progress: bool) -> list[StudyRecord]:
    def bar(records: Iterable) -> Iterable:
        return tqdm(records, total=len(tasks), desc="synthetic studies", disable=not progress)

    if workers <= 1 or len(tasks) <= 1:
        return [make_study(t) for t in bar(tasks)]
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        return list(bar(pool.map(make_study, tasks)))  # map keeps task order: output does not depend on timing


def _write_tables(
    out_dir: Path, tasks: list[StudyTask], records: list[StudyRecord], label_noise: float, seed: int
) -> None:
    train = [r for t, r in zip(tasks, records, strict=True) if t.split == TRAIN]
    test = [r for t, r in zip(tasks, records, strict=True) if t.split == TEST]
    label_columns = ["study_id", *LABEL_COLUMNS]
    series_columns = ["study_id", "series_id", "series_description"]
    coordinate_columns = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    corrected_columns = ["study_id", "series_id", "level", "side", "relative_x", "relative_y"]

    def table(rows: list[dict], columns: list[str], name: str) -> None:
        pd.DataFrame(rows, columns=columns).to_csv(out_dir / name, index=False)

    labels = pd.DataFrame([r.label for r in train], columns=label_columns)
    if label_noise > 0:
        labels, flips = flip_labels(labels, label_noise, np.random.default_rng([seed, 2]))
        flips.to_csv(out_dir / LABEL_FLIPS_CSV, index=False)
    labels.to_csv(out_dir / TRAIN_CSV, index=False)
    table([r.label for r in test], label_columns, TEST_LABELS_CSV)
    table([s for r in train for s in r.series], series_columns, TRAIN_SERIES_CSV)
    table([s for r in test for s in r.series], series_columns, TEST_SERIES_CSV)
    table([c for r in train for c in r.coordinates], coordinate_columns, TRAIN_COORDINATES_CSV)
    table([c for r in train for c in r.corrected], corrected_columns, COORDS_V7_CSV)
    submission = [
        {"row_id": row_id(r.label["study_id"], column), **dict.fromkeys(SEVERITY_COLUMNS, 1 / 3)}
        for r in test
        for column in LABEL_COLUMNS
    ]
    table(submission, ["row_id", *SEVERITY_COLUMNS], SAMPLE_SUBMISSION_CSV)


def make_dataset(
    out_dir: Path,
    n_train: int = 48,
    n_test: int = 8,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    missing_series_fraction: float = 0.0,
    label_noise: float = 0.0,
) -> Path:
    """Write a synthetic dataset in the competition layout to ``out_dir`` and return ``out_dir``.

    Earlier output of this function in ``out_dir`` is replaced; nothing else there is touched.
    ``missing_series_fraction`` of the test studies lose one sagittal series, as some hidden-test
    studies do. ``label_noise`` of the labelled ``train.csv`` cells are flipped to another severity and
    listed in ``label_flips.csv`` (images, coordinates and the hidden test labels keep the truth).
    """
    if n_train < 0 or n_test < 0 or not 0.0 <= missing_series_fraction <= 1.0 or not 0.0 <= label_noise <= 1.0:
        raise ValueError(
            f"need n_train, n_test >= 0 and missing_series_fraction, label_noise in [0, 1], got "
            f"{n_train}, {n_test}, {missing_series_fraction}, {label_noise}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir)
    tasks = _tasks(out_dir, n_train, n_test, seed, missing_series_fraction)
    records = _run(tasks, workers, progress)
    _write_tables(out_dir, tasks, records, label_noise, seed)
    return out_dir
