"""Noisy-label detection, pseudo labels, and the round-2 inputs, on constructed OOF tables."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.core.constants import (
    CONDITIONS,
    FORAMINAL_CONDITIONS,
    IGNORE_INDEX,
    LABEL_COLUMNS,
    LEVEL_SLUGS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    row_id,
)
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import preset
from kaggle_utils.training import denoise, train
from kaggle_utils.training.denoise import round2_inputs

N_STUDIES = 40


def _true_targets(rng: np.random.Generator) -> pd.DataFrame:
    labels = rng.choice(3, size=(N_STUDIES, len(LABEL_COLUMNS)), p=[0.6, 0.25, 0.15])
    return pd.DataFrame({"study_id": 1000 + np.arange(N_STUDIES), **dict(zip(LABEL_COLUMNS, labels.T, strict=True))})


def _oof(truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """OOF rows of an ensemble that knows the truth: ``fo`` the foraminal rows, ``sp1`` all 25; 80-95 % on it."""
    rows = []
    for study, values in zip(truth["study_id"], truth[list(LABEL_COLUMNS)].to_numpy(), strict=True):
        for column, label in zip(LABEL_COLUMNS, values, strict=True):
            probs = np.full(3, 0.0)
            probs[label] = rng.uniform(0.8, 0.95)
            probs[probs == 0] = (1 - probs[label]) / 2
            presets = ["sp1", "fo"] if any(c in column for c in FORAMINAL_CONDITIONS) else ["sp1"]
            rows += [(int(study), 7, row_id(int(study), column), *probs, p) for p in presets]
    return pd.DataFrame(rows, columns=["study_id", "series_id", "row_id", *SEVERITY_COLUMNS, "preset"])


def _plant_flips(truth: pd.DataFrame, rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    given = truth.copy()
    cells = rng.choice(N_STUDIES * len(LABEL_COLUMNS), size=n, replace=False)
    flips = []
    for cell in cells:
        r, c = divmod(int(cell), len(LABEL_COLUMNS))
        column = LABEL_COLUMNS[c]
        true = int(given.at[r, column])
        given.at[r, column] = (true + 1) % 3
        study = int(given.at[r, "study_id"])
        condition, level = column[:-6], column[-5:]
        flips.append((study, row_id(study, column), condition, level, SEVERITIES[true], SEVERITIES[(true + 1) % 3]))
    return given, pd.DataFrame(flips, columns=["study_id", "row_id", "condition", "level", "true", "given"])


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    truth = _true_targets(rng)
    given, flips = _plant_flips(truth, rng, n=30)
    given.loc[3, LABEL_COLUMNS[0]] = IGNORE_INDEX  # a missing label is not scored
    return truth, given, flips, _oof(truth, rng)


def test_the_noisy_score_flags_exactly_the_planted_flips(planted):
    _, given, flips, oof = planted
    table = denoise.noisy_table(denoise.oof_ensemble(oof), given, threshold=0.5)
    assert list(table.columns) == list(denoise.NOISY_COLUMNS)
    assert len(table) == N_STUDIES * len(LABEL_COLUMNS) - 1
    assert set(table.loc[table["noisy"], "row_id"]) == set(flips["row_id"])
    assert table["noisy"].iloc[: len(flips)].all()  # the flips are the most suspicious rows
    flagged = table[table["noisy"]].merge(flips, on="row_id")
    assert (flagged["suggested"].map(SEVERITIES.__getitem__) == flagged["true"]).all()  # and the truth is suggested
    np.testing.assert_allclose(table["score"], 1 - table["prob_label"])
    assert denoise.detection(table, flips) | {"threshold": 0} == {
        "threshold": 0,
        "flagged": 30,
        "flipped": 30,
        "flipped_scored": 30,
        "true_positives": 30,
        "precision": 1.0,
        "recall": 1.0,
    }


def test_counts_per_condition_add_up(planted):
    _, given, flips, oof = planted
    table = denoise.noisy_table(denoise.oof_ensemble(oof), given, threshold=0.5)
    counts = denoise.counts_per_condition(table).set_index("condition")
    expected = flips["condition"].value_counts()
    for condition in CONDITIONS:
        assert counts.at[condition, "noisy"] == expected.get(condition, 0)
    assert counts.at["all", "noisy"] == 30 and counts.at["all", "scored"] == len(table)
    assert counts.loc["all", [f"noisy {s}" for s in SEVERITIES]].sum() == 30


def test_a_rare_class_is_judged_against_the_ensembles_own_confidence_in_it():
    ids = [row_id(s, LABEL_COLUMNS[0]) for s in (1, 2, 3, 4)]
    ensemble = pd.DataFrame(
        {
            "row_id": ids,
            "normal_mild": [0.9, 0.45, 0.1, 0.1],
            "moderate": [0.05, 0.43, 0.8, 0.85],
            "severe": [0.05, 0.12, 0.1, 0.05],
        }
    )
    targets = pd.DataFrame({"study_id": [1, 2, 3, 4], **{c: [0, 2, 1, 0] for c in LABEL_COLUMNS}})
    table = denoise.noisy_table(ensemble, targets, threshold=0.85).set_index("row_id")
    # Spinal self-confidence: Normal 0.5 (rows 1 and 4), Moderate 0.8, Severe 0.12. Study 2's Severe label gets only
    # 12 %, but that is all the ensemble ever gives Severe: 0.12 / 0.12 beats 0.45 / 0.5, so it is kept.
    assert table["suggested"].to_dict() == dict(zip(ids, [0, 2, 1, 1], strict=True))
    assert table.loc[ids[1], "score"] == pytest.approx(0.88)
    assert table["noisy"].to_dict() == dict(zip(ids, [False, False, False, True], strict=True))


def test_precision_and_recall_arithmetic():
    noisy = pd.DataFrame(
        {
            "row_id": list("abcdef"),
            "label": [0] * 6,
            "suggested": [1, 1, 2, 1, -1, 0],
            "score": [0.95, 0.9, 0.88, 0.86, 0.99, 0.97],
        }
    )
    noisy["noisy"] = denoise.flag(noisy, 0.85)  # a-d; e has no suggestion, f suggests its own label
    flips = pd.DataFrame({"row_id": ["a", "c", "e", "g", "h"]})  # g, h were not scored (no OOF)
    result = denoise.detection(noisy, flips)
    assert (result["flagged"], result["true_positives"], result["flipped_scored"]) == (4, 2, 3)
    assert result["precision"] == pytest.approx(2 / 4) and result["recall"] == pytest.approx(2 / 3)
    curve = denoise.detection_curve(noisy, flips, [0.87, 0.9]).set_index("threshold")
    assert curve.loc[0.87, ["flagged", "true_positives"]].tolist() == [3, 2]
    assert curve.loc[0.9, "precision"] == pytest.approx(1 / 2)


def test_pseudo_labels_cover_every_row_and_sum_to_one(planted):
    _, _, _, oof = planted
    pseudo = denoise.pseudo_table(denoise.oof_ensemble(oof))
    assert list(pseudo.columns) == list(denoise.PSEUDO_COLUMNS)
    assert len(pseudo) == N_STUDIES * len(LABEL_COLUMNS)
    np.testing.assert_allclose(pseudo[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)


def test_the_ensemble_routes_foraminal_rows_to_the_t1_model():
    column = f"{FORAMINAL_CONDITIONS[0]}_{LEVEL_SLUGS[0]}"
    oof = pd.DataFrame(
        {
            "study_id": [1, 1, 1],
            "row_id": [row_id(1, column)] * 3,
            "normal_mild": [1.0, 0.0, 0.0],
            "moderate": [0.0, 1.0, 0.0],
            "severe": [0.0, 0.0, 1.0],
            "preset": ["fo", "sp1", "fo"],
        }
    )
    ensemble = denoise.oof_ensemble(oof)
    assert ensemble[list(SEVERITY_COLUMNS)].iloc[0].tolist() == [0.5, 0.0, 0.5]  # sp1 does not vote


def test_noisy_cells_read_our_table_and_the_solutions_file():
    ours = pd.DataFrame(
        {
            "study_id": [5, 6],
            "condition": [CONDITIONS[0], CONDITIONS[3]],
            "level": LEVEL_SLUGS[:2],
            "noisy": [True, False],
        }
    )
    assert denoise.noisy_cells(ours).to_dict("list") == {
        "study_id": [5],
        "column": [f"{CONDITIONS[0]}_{LEVEL_SLUGS[0]}"],
    }
    solutions = pd.DataFrame({"study_id": [7], "target": [CONDITIONS[4]], "level": [LEVEL_SLUGS[4]]})
    assert denoise.noisy_cells(solutions)["column"].tolist() == [f"{CONDITIONS[4]}_{LEVEL_SLUGS[4]}"]
    with pytest.raises(ValueError, match="L1/L2"):
        denoise.noisy_cells(pd.DataFrame({"study_id": [7], "target": [CONDITIONS[4]], "level": ["L1/L2"]}))


def test_ignoring_noisy_cells_counts_per_condition_on_a_subset_of_studies():
    targets = pd.DataFrame({"study_id": [1, 2, 3], **{c: [0, 1, 2] for c in LABEL_COLUMNS}})
    targets.loc[2, LABEL_COLUMNS[1]] = IGNORE_INDEX
    subset = targets.iloc[1:]  # the index no longer starts at 0, as in one fold's training studies
    cells = pd.DataFrame(
        {
            "study_id": [2, 3, 3, 1],
            "column": [LABEL_COLUMNS[0], LABEL_COLUMNS[1], LABEL_COLUMNS[-1], LABEL_COLUMNS[0]],
        }
    )
    out, dropped = denoise.ignore_noisy(subset, cells)
    assert out.loc[out.study_id == 2, LABEL_COLUMNS[0]].item() == IGNORE_INDEX
    assert out.loc[out.study_id == 3, LABEL_COLUMNS[-1]].item() == IGNORE_INDEX
    assert out.loc[out.study_id == 2, LABEL_COLUMNS[1]].item() == 1  # untouched
    assert dict(zip(dropped.condition, dropped.dropped, strict=True)) == {
        CONDITIONS[0]: 1,  # study 3's second cell was missing already, study 1 is not in the subset
        CONDITIONS[1]: 0,
        CONDITIONS[2]: 0,
        CONDITIONS[3]: 0,
        CONDITIONS[4]: 1,
    }
    assert subset.loc[2, LABEL_COLUMNS[-1]] == 2  # the input is not modified


def test_true_targets_undo_the_flips(planted):
    truth, given, flips, _ = planted
    restored = denoise.true_targets(given, flips)
    expected = truth.copy()
    expected.loc[3, LABEL_COLUMNS[0]] = IGNORE_INDEX
    pd.testing.assert_frame_equal(restored, expected)


def test_cv_compare_scores_both_rounds_on_the_same_studies(planted):
    truth, given, flips, oof = planted
    before = oof.copy()
    before[list(SEVERITY_COLUMNS)] = 1 / 3
    after = oof[oof["study_id"] < 1020]  # round 2 covers half the studies: before is cut to those
    table = denoise.cv_compare(before, after, {"given": given, "true": truth})
    assert set(table["model"]) == {"sp1", "fo", "ensemble (routed)"} and set(table["labels"]) == {"given", "true"}
    assert (table["change"] < 0).all()  # the informed round beats uniform guesses
    true_rows = table[table["labels"] == "true"].set_index("model")
    given_rows = table[table["labels"] == "given"].set_index("model")
    assert (true_rows["after"] < given_rows["after"]).all()  # it predicts the truth, not the flips
    assert true_rows.loc["sp1", "before"] == pytest.approx(given_rows.loc["sp1", "before"], rel=0.2)


def test_a_missing_table_names_the_file_and_the_field(tmp_path: Path):
    missing = tmp_path / "nowhere" / "noisy_labels.csv"
    cfg = preset("sp1", "smoke", {"noisy_labels": str(missing)})
    targets = pd.DataFrame({"study_id": [1], **{c: [0] for c in LABEL_COLUMNS}})
    with pytest.raises(FileNotFoundError, match=re.escape(f"noisy_labels='{missing}': {missing} does not exist")):
        round2_inputs(cfg, targets, fold=0)
    cfg = preset("fo", "smoke", {"pseudo_labels": str(tmp_path / "pseudo.csv")})
    with pytest.raises(FileNotFoundError, match="pseudo_labels=.*pseudo.csv"):
        round2_inputs(cfg, targets, fold=0)


def test_round_one_config_changes_nothing_and_round_two_prints_the_drops(tmp_path: Path, capsys):
    targets = pd.DataFrame({"study_id": [1, 2], **{c: [0, 2] for c in LABEL_COLUMNS}})
    same, pseudo = round2_inputs(preset("sp1", "smoke"), targets, fold=0)
    assert same is targets and pseudo is None
    noisy = pd.DataFrame(
        {"study_id": [2], "row_id": ["x"], "condition": [CONDITIONS[2]], "level": [LEVEL_SLUGS[1]], "noisy": [True]}
    )
    noisy.to_csv(tmp_path / "noisy.csv", index=False)
    pd.DataFrame({"study_id": [1], "row_id": ["y"], "normal_mild": [1.0], "moderate": [0.0], "severe": [0.0]}).to_csv(
        tmp_path / "pseudo.csv", index=False
    )
    cfg = preset(
        "sp1", "smoke", {"noisy_labels": str(tmp_path / "noisy.csv"), "pseudo_labels": str(tmp_path / "pseudo.csv")}
    )
    out, pseudo = round2_inputs(cfg, targets, fold=3)
    assert out.loc[1, f"{CONDITIONS[2]}_{LEVEL_SLUGS[1]}"] == IGNORE_INDEX and len(pseudo) == 1
    assert f"sp1 f3: 1 noisy training labels ignored ({CONDITIONS[0]} 0, {CONDITIONS[1]} 0, {CONDITIONS[2]} 1" in (
        capsys.readouterr().out
    )


def test_load_oof_reads_the_named_files_and_says_which_are_missing(tmp_path: Path, capsys):
    paths = Paths(tmp_path, tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="train round 1 first"):
        denoise.load_oof(paths, [preset("fo", "smoke")], [0])
    paths.oof_dir.mkdir(parents=True)
    frame = pd.DataFrame({"study_id": [1], "row_id": ["r"], "normal_mild": [1.0], "moderate": [0.0], "severe": [0.0]})
    frame.to_csv(paths.oof_dir / "fo-f1-s42.csv", index=False)
    frame.to_csv(paths.oof_dir / "oof_submission.csv", index=False)  # notebook 04's file is not a preset's
    oof = denoise.load_oof(paths, [preset("fo", "smoke"), preset("sp1", "smoke")], [0, 1])
    assert oof["preset"].tolist() == ["fo"]
    assert "fo-f0-s42.csv, sp1-f0-s42.csv, sp1-f1-s42.csv" in capsys.readouterr().out


@pytest.mark.slow
def test_the_command_lines_run_both_rounds(prepared: Paths, tmp_path: Path, capsys):
    """Round 1 on two folds, the tables, then round 2 of fold 0 in its own folder; round 1 stays as it was."""
    work = tmp_path / "work"
    shutil.copytree(prepared.work_dir, work, ignore=shutil.ignore_patterns("models", "oof"))
    paths = Paths(prepared.data_dir, work)
    where = ["--profile", "smoke", "--data-dir", str(paths.data_dir), "--work-dir", str(work)]
    assert train.main(["--presets", "fo", "--folds", "0", "1", *where]) == 0
    first = (paths.checkpoint("fo", 0, 42).read_bytes(), (paths.oof_dir / "fo-f0-s42.csv").read_text())
    assert denoise.main(["--presets", "fo", *where]) == 0
    assert "flagged" in capsys.readouterr().out  # the tiny data has flips, so the detection is printed
    tables = [f"noisy_labels={paths.table('noisy_labels')}", f"pseudo_labels={paths.table('pseudo_labels')}"]
    assert (
        train.main(
            ["--presets", "fo", "--folds", "0", "--run", "denoised", *where, "--set", tables[0], "--set", tables[1]]
        )
        == 0
    )
    round2 = paths.with_run("denoised")
    sidecar = json.loads(round2.checkpoint("fo", 0, 42).with_suffix(".json").read_text())
    assert sidecar["config"]["pseudo_labels"] == str(paths.table("pseudo_labels"))
    assert (round2.oof_dir / "fo-f0-s42.csv").exists()
    assert (paths.checkpoint("fo", 0, 42).read_bytes(), (paths.oof_dir / "fo-f0-s42.csv").read_text()) == first
