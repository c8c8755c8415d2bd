"""Competition vocabulary: levels, conditions, severities, label columns, series types, known bad ids.

Every such value is written exactly once in the project; everything else imports it from here.
"""

from __future__ import annotations

LEVEL_SLUGS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
"""Level suffixes as they appear in ``train.csv`` columns and submission row ids."""

LEVEL_NAMES: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
"""Level names as they appear in ``train_label_coordinates.csv`` and the keypoint tables."""

CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
"""Condition prefixes of the label columns, in ``train.csv`` order."""

CONDITION_TITLES: dict[str, str] = {c: c.replace("_", " ").title() for c in CONDITIONS}
"""Condition names as written in ``train_label_coordinates.csv`` ("Spinal Canal Stenosis", ...)."""

CONDITION_FAMILIES: tuple[str, ...] = ("spinal", "foraminal", "subarticular")
"""The metric pools left and right into these three families."""

SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
"""Label values in ``train.csv``; their index is the class index everywhere."""

SEVERITY_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
"""Probability columns of the submission, in class-index order."""

SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Metric and loss weight of a row whose true class is Normal/Mild, Moderate, Severe."""

IGNORE_INDEX = -100
"""Class index of a missing label (ignored by losses and metric)."""

LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVEL_SLUGS)
"""The 25 label columns of ``train.csv``, condition-major as the competition writes them."""

MODEL_LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for lv in LEVEL_SLUGS for c in CONDITIONS)
"""The same 25 columns level-major: the order of the stage-2 model outputs (5 levels x 5 conditions)."""

FORAMINAL_CONDITIONS: tuple[str, ...] = (CONDITIONS[1], CONDITIONS[2])
"""Conditions a Sagittal T1 classifier predicts, left then right."""

SUBARTICULAR_CONDITIONS: tuple[str, ...] = (CONDITIONS[3], CONDITIONS[4])
"""The conditions of the points clicked on Axial T2 slices, left then right."""

SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)


TTA_ANGLES: tuple[float, ...] = (0.0, -15.0, 15.0, -10.0, 10.0, -5.0, 5.0, -20.0, 20.0)
"""Stage-2 test-time rotations in degrees, in the solution's order (index 0 is the plain view)."""

ALL_STUDIES_FOLD = -1
"""The fold of a final model: trained on every training study, without validation (what a submission uses)."""

STAGE1_GRID = 256
"""Keypoint errors are reported in pixels of the 256 x 256 stage-1 grid, in training's validation and in the CV."""

EXCLUDED_SERIES: dict[int, str] = {
    3892989905: "labelled 'Sagittal T2/STIR' but carries no points; the study's spinal points sit on a T1",
    2097107888: "bad Axial T2 listed by the solution",
    2679683906: "bad Axial T2 listed by the solution",
    1771893480: "bad Axial T2 listed by the solution",
    996418962: "bad Axial T2 listed by the solution",
    1753543608: "bad Axial T2 listed by the solution",
    1848483560: "bad Axial T2 listed by the solution",
}
"""Training series left out, each with the reason."""

EXCLUDED_STUDIES: dict[int, str] = {
    2492114990: "dropped by the solution (unreliable series or labels)",
    2780132468: "dropped by the solution (unreliable series or labels)",
    3008676218: "all spinal labels missing",
    3637444890: "spinal points placed on a Sagittal T1 series; its T2 series is mislabelled",
}
"""Training studies left out, each with the reason."""


def row_id(study_id: int, label_column: str) -> str:
    """Submission row id of one label column of one study, e.g. ``44036939_spinal_canal_stenosis_l1_l2``."""
    return f"{study_id}_{label_column}"


def condition_family(label_column: str) -> str:
    """Metric family (spinal, foraminal, subarticular) of a label column or row id."""
    for family in CONDITION_FAMILIES:
        if family in label_column:
            return family
    raise ValueError(f"no condition family in {label_column!r}")
