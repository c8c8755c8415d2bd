"""Paths resolve from arguments, the environment, Kaggle's mounts (searched, not assumed), then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_utils.core import paths as P


def test_arguments_then_environment_then_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.delenv("WORK_DIR", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(P, "KAGGLE_INPUT", tmp_path / "no-kaggle")
    assert P.Paths.resolve() == P.Paths(P.DEFAULT_DATA_DIR, P.DEFAULT_WORK_DIR)
    monkeypatch.setenv("WORK_DIR", str(tmp_path / "w"))
    assert P.Paths.resolve().work_dir == tmp_path / "w"
    assert P.Paths.resolve(work_dir=tmp_path / "x").work_dir == tmp_path / "x"


@pytest.mark.parametrize(
    "layout",
    [
        "rsna-2024-lumbar-spine-degenerative-classification",
        "competitions/rsna-2024-lumbar-spine-degenerative-classification",
    ],
)
def test_competition_folder_is_found_at_any_mount_depth(tmp_path, layout):
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    (folder / P.TEST_SERIES_CSV).write_text("study_id,series_id,series_description\n")
    (tmp_path / "other-dataset").mkdir()
    assert P.find_competition_dir(tmp_path) == folder


def test_missing_competition_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="add the competition"):
        P.find_competition_dir(tmp_path)


def test_file_layout():
    paths = P.Paths(Path("/d"), Path("/w"))
    assert paths.stage1_array(1, 2) == Path("/w/stage1/1/2.npy")
    assert paths.stage2_array(1, 2) == Path("/w/stage2/1/2.npy")
    assert paths.checkpoint("fo", 3, 42) == Path("/w/models/fo-f3-s42.pt")
    assert paths.series_dir("test", 1, 2) == Path("/d/test_images/1/2")


def test_a_training_round_has_its_own_outputs_and_shares_the_inputs():
    paths = P.Paths(Path("/d"), Path("/w")).with_run("denoised")
    assert paths.checkpoint("fo", 0, 42) == Path("/w/denoised/models/fo-f0-s42.pt")
    assert (paths.oof_dir, paths.cv_json, paths.submission_csv, paths.denoise_json) == (
        Path("/w/denoised/oof"),
        Path("/w/denoised/cv.json"),
        Path("/w/denoised/submission.csv"),
        Path("/w/denoised/denoise.json"),
    )
    assert paths.table("targets") == Path("/w/tables/targets.csv")
    assert paths.stage2_array(1, 2) == Path("/w/stage2/1/2.npy")
    assert paths.with_run("").oof_dir == Path("/w/oof") and paths.with_run("").cv_json == Path("/w/cv.json")
    weights = P.Paths(Path("/d"), Path("/w"), Path("/kaggle/input/weights"), run="denoised")
    assert weights.models_dir == Path("/kaggle/input/weights")  # a weights dataset wins, as in round 1


def test_an_interrupted_runs_resume_state_is_not_a_checkpoint(tmp_path):
    paths = P.Paths(data_dir=tmp_path, work_dir=tmp_path / "work")
    paths.models_dir.mkdir(parents=True)
    finished, running = paths.checkpoint("sp1", 0, 42), paths.checkpoint("fo", 1, 42)
    finished.write_bytes(b"")
    P.resume_state(running).write_bytes(b"")
    assert P.resume_state(running).name == "fo-f1-s42.state.pt"
    assert paths.checkpoints() == [finished]
