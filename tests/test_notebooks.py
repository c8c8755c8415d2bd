"""The five notebooks, executed headless in a real kernel on the tiny synthetic dataset, and the .py/.ipynb pairs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import pytest

import kaggle_utils
from kaggle_utils.core.constants import LABEL_COLUMNS, LEVEL_NAMES
from kaggle_utils.core.paths import Paths
from kaggle_utils.dev.runner import run_notebook
from kaggle_utils.inference.blend import Blend

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("0*.py"))
# Round 1 trains two folds so that round 2 (05) of fold 0 has OOF predictions for some of its training studies;
# round 2 retrains two presets to stay quick.
EXTRA_ENV = {"03_train_stage2": {"FOLDS": "[0, 1]"}, "05_denoise": {"PRESETS": '["fs", "sp1"]'}}


def test_five_paired_notebooks_in_sync():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_preprocess",
        "02_train_stage1",
        "03_train_stage2",
        "04_inference",
        "05_denoise",
    ]
    for source in NOTEBOOKS:
        twin = source.with_suffix(".ipynb")
        assert twin.exists(), f"{twin} missing: run `make notebooks`"
        py_cells = [(c.cell_type, c.source) for c in jupytext.read(source).cells]
        ipynb_cells = [(c.cell_type, c.source) for c in jupytext.read(twin).cells]
        assert py_cells == ipynb_cells, f"{twin.name} differs from {source.name}: run `make notebooks`"
        assert not any(c.get("outputs") for c in jupytext.read(twin).cells), f"{twin.name} has outputs committed"


def test_every_notebook_starts_with_the_same_bootstrap():
    """The first code cell finds kaggle_utils (here or in /kaggle/input) and installs the wheels dataset: one text."""
    bootstraps = {p.stem: next(c.source for c in jupytext.read(p).cells if c.cell_type == "code") for p in NOTEBOOKS}
    assert len(set(bootstraps.values())) == 1, f"bootstrap cells differ: {sorted(bootstraps)}"
    assert "KAGGLE_INPUT_DIR" in bootstraps["01_preprocess"] and "install_offline" in bootstraps["01_preprocess"]


@pytest.mark.slow
def test_pipeline_runs_end_to_end(tiny_data, tmp_path):
    work = tmp_path / "work"
    env = {"DATA_DIR": str(tiny_data), "WORK_DIR": str(work), "PROFILE": "smoke", "FOLDS": "[0]", "WORKERS": "1"}
    for source in NOTEBOOKS:
        notebook_env = env | EXTRA_ENV.get(source.stem, {})
        run_notebook(source, work / "executed" / f"{source.stem}.ipynb", notebook_env, timeout=600, echo=False)

    series = pd.read_csv(work / "tables" / "series.csv")
    first = series.iloc[0]
    assert np.load(work / "stage1" / str(first.study_id) / f"{first.series_id}.npy").shape[1:] == (256, 256)
    crops = np.load(work / "stage2" / str(first.study_id) / f"{first.series_id}.npy")
    assert crops.shape[0] == 5 and crops.shape[2:] == (256, 256) and crops.dtype == np.uint8
    assert list((work / "figures").glob("study_*.png"))
    assert list((work / "figures").glob("axial_levels_*.png"))
    levels = pd.read_csv(work / "tables" / "axial_levels.csv")
    assert levels["assigned"].any() and set(levels["level"]) <= set(LEVEL_NAMES)
    for name in ("stage1_t1", "stage1_t2", "stage1_axial", "fs", "sp1", "sp2", "su", "ax"):
        sidecar = json.loads((work / "models" / f"{name}-f0-s42.json").read_text())
        assert sidecar["fold"] == 0 and sidecar["config"]["name"] == name
        assert (work / "models" / f"{name}-f0-s42.curves.png").exists()

    submission = pd.read_csv(work / "submission.csv")
    test_studies = pd.read_csv(tiny_data / "test_series_descriptions.csv")["study_id"].unique()
    assert len(submission) == 25 * len(test_studies)
    assert set(submission["row_id"]) == {f"{s}_{c}" for s in test_studies for c in LABEL_COLUMNS}
    assert np.allclose(submission[["normal_mild", "moderate", "severe"]].sum(axis=1), 1)

    report = json.loads((work / "cv.json").read_text())
    for key in (
        "spinal",
        "foraminal",
        "subarticular",
        "any_severe_spinal",
        "score",
        "oracle_score",
        "prior_score",
        "test_score",
        "test_prior_score",
        "sagittal_only_score",
    ):
        assert np.isfinite(report[key]), key
    counts = {
        "one_sided_samples",
        "samples_dropped_by_slice_check",
        "points_dropped_by_slice_check",
        "levels_recentred",
        "stray_images_dropped",
    }
    assert set(report["axial_checks"]) == counts and set(report["test_axial_checks"]) < counts
    assert report["axial_checks"]["one_sided_samples"] >= 1  # a level of the two-pass study lacks one grade
    for view in ("t1", "t2", "axial"):  # the localisers on the held-out folds, as other tools read them
        assert set(report["stage1"][view]) == {"mean_px", "within_5px", "within_1pct", "within_5pct"}
    assert (work / "figures" / "worst_localisation.png").exists()
    assert (work / "figures" / "axial_predicted.png").exists()
    blended = Blend.load(Paths(tiny_data, work).blend_file)  # fit by 04's CV, read by the kernel beside the models
    assert set(blended.families) == {"spinal", "subarticular"} and report["blend"] == blended.to_dict()

    # Round 2 (05): its tables, its own models and OOF beside round 1's, and the report.
    noisy = pd.read_csv(work / "tables" / "noisy_labels.csv")
    pseudo = pd.read_csv(work / "tables" / "pseudo_labels.csv")
    flips = pd.read_csv(tiny_data / "label_flips.csv")
    covered = set(pseudo["study_id"])
    assert covered == set(pd.read_csv(work / "tables" / "folds.csv").query("fold in [0, 1]")["study_id"])
    assert set(noisy["study_id"]) <= covered and len(noisy) > 0
    assert (work / "figures" / "noisy_labels.png").exists()
    for name in ("fs", "sp1"):
        first = json.loads((work / "models" / f"{name}-f0-s42.json").read_text())["config"]
        second = json.loads((work / "denoised" / "models" / f"{name}-f0-s42.json").read_text())["config"]
        assert first["noisy_labels"] == first["pseudo_labels"] == ""
        assert second["noisy_labels"] == str(work / "tables" / "noisy_labels.csv") and second["pseudo_weight"] == 0.5
        assert (work / "oof" / f"{name}-f0-s42.csv").exists() and (
            work / "denoised" / "oof" / f"{name}-f0-s42.csv"
        ).exists()
    assert (work / "denoised" / "models" / "stage1_t2-f0-s42.pt").exists()  # a complete models folder for 04
    denoised = json.loads((work / "denoised" / "denoise.json").read_text())
    assert denoised["detection"]["flipped"] == len(flips)
    assert {(r["model"], r["labels"]) for r in denoised["cv"]} >= {("ensemble (routed)", "given"), ("fs", "true")}


def test_the_notebooks_call_this_release_and_refuse_an_older_code_dataset(tmp_path):
    bootstrap = next(c.source for c in jupytext.read(NOTEBOOKS[0]).cells if c.cell_type == "code")
    written_for = re.search(r'WRITTEN_FOR = "([\d.]+)"', bootstrap)[1]
    assert kaggle_utils.__version__.startswith(written_for + ".")
    old = tmp_path / "kaggle_utils"  # what an older code dataset mounts: the flat modules of 0.1
    old.mkdir()
    (old / "__init__.py").write_text('__version__ = "0.1.0"\n')
    ran = subprocess.run([sys.executable, "-c", bootstrap], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode != 0
    assert f"this notebook calls kaggle_utils {written_for}, but {old} holds 0.1.0: publish the code" in ran.stderr
