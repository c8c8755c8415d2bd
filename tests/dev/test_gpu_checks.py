"""The one-run GPU checks, exercised on the CPU: the wheels it carries, its steps, their limits and its files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaggle_utils.core.paths import REPO_ROOT
from kaggle_utils.dev import gpu_checks
from kaggle_utils.dev.gpu_checks import Step


def test_the_kit_carries_what_a_pytorch_image_lacks_at_the_versions_installed_here() -> None:
    pins = dict(pin.split("==") for pin in gpu_checks.wheel_pins("3.12"))
    assert {"kornia", "pydicom", "pylibjpeg", "jupytext", "nbclient", "ipykernel"} <= set(pins)
    assert not {"torch", "numpy", "pandas", "timm", "opencv-python-headless", "kaggle-utils-rsna24"} & set(pins)
    from importlib.metadata import version

    assert pins["kornia"] == version("kornia")


def test_only_wheels_of_missing_packages_are_installed(tmp_path: Path, monkeypatch) -> None:
    for name in ("pytest-9.9.9-py3-none-any.whl", "no_such_package_here-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    calls = []
    monkeypatch.setattr(gpu_checks.subprocess, "run", lambda command, check: calls.append(command))
    assert gpu_checks.install_missing(tmp_path, tmp_path / "site") == ["no_such_package_here"]
    (command,) = calls
    assert command[command.index("--target") + 1] == str(tmp_path / "site") and "--no-index" in command
    assert command[-1].endswith("no_such_package_here-1.0-py3-none-any.whl") and len(calls) == 1


def test_the_steps_are_the_make_targets_run_with_this_python(tmp_path: Path, monkeypatch) -> None:
    steps = gpu_checks.plan_steps(tmp_path / "out", tmp_path / "scratch")
    assert [s.name for s in steps] == [
        "gpu tests",
        "preflight",
        "bench-infer",
        "bench-train",
        "preflight, T4 simulated",
    ]
    assert steps[0].command[1:5] == ["-m", "pytest", "-m", "gpu"]
    preflight = steps[1].command
    assert preflight[:5] == ["make", f"PY={sys.executable}", "-o", "install", "preflight"]
    assert f"PREFLIGHT_FLAGS=--out {tmp_path / 'out'}" in preflight
    assert "--memory-gib" in steps[-1].command and str(tmp_path / "out" / "t4") in steps[-1].command
    assert sum(s.limit_s for s in steps[:4]) <= 1.15 * gpu_checks.BUDGET_S  # the four, about the budget
    monkeypatch.setattr(gpu_checks.shutil, "which", lambda name: None)  # no make: the modules the targets run
    direct = gpu_checks.plan_steps(tmp_path / "out", tmp_path / "scratch")[3].command
    assert direct[:3] == [sys.executable, "-m", "kaggle_utils.dev.bench_train"] and "--steps" in direct


def test_a_step_streams_its_output_and_is_stopped_at_its_limit(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as log:
        done = gpu_checks.run_step(Step("say", [sys.executable, "-c", "print('hello')"], 30), 30, {}, log)
        started = time.perf_counter()
        slow = [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"]
        stopped = gpu_checks.run_step(Step("slow", slow, 60), 1, {}, log)
    assert done.returncode == 0 and done.output == ["hello\n"] and not done.timed_out
    assert stopped.timed_out and stopped.returncode != 0 and time.perf_counter() - started < 15
    text = (tmp_path / "log").read_text()
    assert (
        "===== say (limit 30 s)" in text and "hello" in text and "slow: exit" in text and "stopped at its limit" in text
    )


def test_the_budget_leaves_out_what_it_cannot_fit(tmp_path: Path) -> None:
    quick = Step("quick", [sys.executable, "-c", "pass"], 30)
    with (tmp_path / "log").open("w") as log:
        outcomes = gpu_checks.run_all([quick, quick], budget_s=gpu_checks.MIN_STEP_S + 5, env={}, log=log)
        assert outcomes[0].returncode == 0 and outcomes[0].limit_s <= gpu_checks.MIN_STEP_S + 5
        assert gpu_checks.run_all([quick], budget_s=1, env={}, log=log)[0].skipped


def test_a_run_writes_its_log_and_summary_into_out(tmp_path: Path, monkeypatch) -> None:
    steps = [
        Step("ok", [sys.executable, "-c", "print(1)"], 30),
        Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], 30),
    ]
    monkeypatch.setattr(gpu_checks, "plan_steps", lambda out, scratch: steps)
    assert gpu_checks.main(["run", "--out", str(tmp_path), "--wheels", str(tmp_path / "none")]) == 1
    summary = json.loads((tmp_path / gpu_checks.SUMMARY).read_text())
    assert [(s["name"], s["returncode"]) for s in summary["steps"]] == [("ok", 0), ("fails", 3)]
    assert summary["installed"] == [] and "device" in summary
    assert "===== fails" in (tmp_path / gpu_checks.LOG).read_text()


@pytest.mark.parametrize("target", ["gpu-checks", "gpu-kit", "preflight"])
def test_the_make_targets_call_the_modules(target: str) -> None:
    make = ["make", "-C", str(REPO_ROOT), "--no-print-directory", "-n", f"PY={sys.executable}", "-o", "install", target]
    dry = subprocess.run(make, capture_output=True, text=True)
    module = "kaggle_utils.dev.preflight" if target == "preflight" else "kaggle_utils.dev.gpu_checks"
    assert dry.returncode == 0 and f"{sys.executable} -m {module}" in dry.stdout
