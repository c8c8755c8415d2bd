"""The preflight run on the CPU: its smoke path end to end, a preset's line, and the end-to-end pass's contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kaggle_utils.core.paths import PREFLIGHT_JSON, PREFLIGHT_PNG
from kaggle_utils.core.presets import preset
from kaggle_utils.dev import preflight
from kaggle_utils.dev.bench_arrays import CachedArrays
from kaggle_utils.dev.preflight_report import END_TO_END, FAILS, INFERENCE, RUNS, SKIPPED, TRAIN
from kaggle_utils.dev.preflight_search import FITS, FITS_WITH, NO_FIT, Attempt, Fit, Measurement
from kaggle_utils.dev.preflight_time import StepTimes, recipe_hours


def test_on_the_cpu_it_runs_the_smoke_profile_and_says_so(tmp_path: Path, capsys) -> None:
    argv = ["--presets", "sp1", "--folds", "0", "1", "--studies", "100", "--out", str(tmp_path)]
    report = preflight.main(argv + ["--set", "epochs=3"])
    assert not report.on_gpu and report.profile == "smoke" and report.card_gib is None
    assert [(line.name, line.kind) for line in report.lines] == [
        ("sp1", TRAIN),
        ("inference, CPU", INFERENCE),
        ("inference, 1x T4 fp16", INFERENCE),
        ("inference, 2x T4 fp16", INFERENCE),
        ("end-to-end", END_TO_END),
    ]
    sp1 = report.lines[0]
    assert sp1.verdict == FITS and sp1.shape == "4 x 5 x 8 x 32px" and sp1.ms > 0 and sp1.peak_gib is None
    assert sp1.hours > 0 and sp1.tries[0]["fits"] and report.lines[-1].verdict == SKIPPED
    assert all(line.verdict == FITS for line in report.lines[1:4]) and report.lines[1].ms > 0
    out = capsys.readouterr().out
    assert "not a GPU's" in out and "make train-all" in out and report.summary() in out
    saved = json.loads((tmp_path / PREFLIGHT_JSON).read_text())
    assert saved["user_overrides"] == {"epochs": 3} and saved["folds"] == [0, 1] and saved["caveat"]
    assert (tmp_path / PREFLIGHT_PNG).exists()


def test_a_presets_line_projects_the_recipe_with_the_overrides_that_made_it_fit() -> None:
    cfg = preset("sp2")
    found = {"grad_checkpointing": True, "batch_size": 16}
    attempts = [
        Attempt({}, None),
        Attempt({"grad_checkpointing": True}, None),
        Attempt(found, Measurement(200, 50, 14)),
    ]
    line = preflight.training_line(Fit(cfg, FITS_WITH, found, attempts), 15.0, 1975, [0, 1, 2, 3], 4)
    smaller = preset("sp2", overrides=found)
    assert line.hours == pytest.approx(recipe_hours(smaller, StepTimes(200, 50), 1975, [0, 1, 2, 3], 4))
    assert line.shape == "16 x 5 x 5 x 256px" and line.overrides == found
    assert "lr stays" in line.note and [t["fits"] for t in line.tries] == [False, False, True]
    none = preflight.training_line(Fit(cfg, NO_FIT, {}, attempts[:2]), 15.0, 1975, [0], 4)
    assert none.verdict == NO_FIT and none.hours is None and none.shape == "32 x 5 x 5 x 256px"


def test_room_is_said_where_the_peak_leaves_half_the_card() -> None:
    assert preflight.room_note(21.0, 79.0) == "room: peak 27% of the card"
    assert preflight.room_note(60.0, 79.0) == "peak 76% of the card"
    assert preflight.room_note(None, None) == ""


def test_a_step_is_measured_on_the_cpu_without_a_peak(tmp_path: Path) -> None:
    data = CachedArrays.write(tmp_path, n_studies=2, n_slices=3)
    cfg = preset("stage1_t2", "smoke", {"batch_size": 2, "num_workers": 0, "pretrained": False})
    measured = preflight.measure_step(cfg, data, torch.device("cpu"), steps=1, warmup=0)
    assert measured.train_ms > 0 and measured.eval_ms > 0 and measured.peak_gib is None


def test_the_cpu_plan_is_seconds_long_and_the_gpu_plan_is_the_recipe(tmp_path: Path) -> None:
    cpu = preflight.Plan.from_args(preflight.parse_args(["--out", str(tmp_path)]), torch.device("cpu"))
    assert (cpu.profile, cpu.steps, cpu.warmup, cpu.e2e, cpu.infer_folds) == ("smoke", 1, 0, False, 1)
    assert cpu.infer_cfg.tta_angles == (0.0,) and cpu.studies == 1975 and cpu.folds == [0, 1, 2, 3]
    assert all(not c.pretrained and c.img_size <= 64 for c in cpu.configs)
    gpu = preflight.Plan.from_args(preflight.parse_args(["--set", "lr=2e-4"]), torch.device("cuda"))
    assert (gpu.profile, gpu.steps, gpu.e2e, gpu.infer_folds, len(gpu.infer_cfg.tta_angles)) == ("full", 5, True, 4, 9)
    assert all(c.lr == 2e-4 and not c.pretrained and c.backbone.startswith("hgnetv2_b5") for c in gpu.configs)
    forced = preflight.parse_args(["--e2e", "on"])
    assert preflight.Plan.from_args(forced, torch.device("cpu")).e2e


def test_the_end_to_end_pass_runs_the_four_notebooks_for_one_epoch(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def run(source: Path, executed: Path, env: dict, **_) -> None:
        calls.append((source.name, dict(env)))
        executed.parent.mkdir(parents=True, exist_ok=True)
        executed.write_text("{}")
        if source.stem == "03_train_stage2" and env.get("FAIL"):
            raise RuntimeError("cell 7 failed\nRuntimeError: CUDA out of memory")

    monkeypatch.setattr(preflight, "run_notebook", run)
    line = preflight.end_to_end(tmp_path / "data", tmp_path / "work", "full", {"weights_file": "w.pt"}, tmp_path)
    assert line.verdict == RUNS and [name for name, _ in calls] == [f"{n}.py" for n in preflight.E2E_NOTEBOOKS]
    env = calls[0][1]
    assert env["PROFILE"] == "full" and env["FOLDS"] == "[0]" and env["PRESETS"] == "[]"
    assert json.loads(env["TRAIN_OVERRIDES"]) == {"weights_file": "w.pt", "epochs": 1, "pretrained": False}
    monkeypatch.setenv("FAIL", "1")
    monkeypatch.setattr(preflight, "run_notebook", lambda s, e, env, **k: run(s, e, {**env, "FAIL": "1"}))
    failed = preflight.end_to_end(tmp_path / "data", tmp_path / "work", "full", {}, tmp_path / "out")
    assert failed.verdict == FAILS and failed.note.startswith("03_train_stage2: RuntimeError: CUDA out of memory")
    assert (tmp_path / "out" / "e2e_failed_03_train_stage2.ipynb").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_a_capped_card_is_searched_and_its_memory_given_back(tmp_path: Path) -> None:
    """stage1_t2 at full shapes under an 8 GiB cap: it does not fit as it is (about 20 GiB), the search finds what
    does, and every try's memory is returned."""
    device = torch.device("cuda")
    data = CachedArrays.write(tmp_path, n_studies=32, n_slices=8, distinct=2)
    cfg = preset("stage1_t2", "full", {"pretrained": False, "num_workers": 0})
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    before = torch.cuda.memory_allocated(device)
    torch.cuda.set_per_process_memory_fraction(8 / total, device)
    try:
        result = preflight.search(
            cfg, lambda c: preflight.measure_step(c, data, device, 1, 1), lambda: preflight.release(device)
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert not result.attempts[0].fits and result.verdict in (FITS_WITH, NO_FIT)
    assert result.measurement is None or result.measurement.peak_gib <= 8
    assert torch.cuda.memory_allocated(device) - before < 2**28  # every try's tensors are gone
