"""The headless runner: what a cell prints reaches the console as it is printed, warnings included, progress bars by
their last state; wrong parameters stop it before the first notebook."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kaggle_utils.core.paths import REPO_ROOT
from kaggle_utils.dev import runner

NOISY = """# %%
import warnings
from tqdm.auto import tqdm

print("a line on stdout")
warnings.warn("study 1 series 2: slice left out: 3.dcm: cannot read DICOM file")
for _ in tqdm(range(3), desc="a bar"):
    pass
for _ in tqdm(range(3), desc="a bar that clears itself", leave=False):
    pass
open("ran.txt", "w").write("yes")
"""


def _notebook(tmp_path: Path) -> Path:
    source = tmp_path / "noisy.py"
    source.write_text(NOISY)
    return source


def test_stdout_warnings_and_the_last_state_of_a_bar_reach_the_console(tmp_path: Path, capsys) -> None:
    runner.run_notebook(_notebook(tmp_path), timeout=120)
    lines = capsys.readouterr().out.splitlines()
    shown = [line.split("] ", 1)[1] for line in lines if line.startswith("[noisy ")]
    assert "a line on stdout" in shown
    assert any("UserWarning: study 1 series 2: slice left out: 3.dcm" in line for line in shown)
    bars = [line for line in shown if line.startswith("a bar")]
    assert len(bars) == 1 and "3/3" in bars[0]  # the final state only; the bar that cleared itself not at all
    assert not any("IProgress" in line for line in shown)


def test_a_wrong_parameter_stops_the_run_before_the_first_notebook(tmp_path: Path, capsys) -> None:
    source = _notebook(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        runner.main([str(source), "--set", 'PRESETS=["zz"]'])
    assert stopped.value.code == 2 and "unknown stage-2 preset 'zz'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.main([str(source), "--set", 'TRAIN_OVERRIDES={"epochs": 0}'])
    assert "epochs=0: expected a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "ran.txt").exists()


@pytest.mark.parametrize(("profile", "infer_overrides"), [("demo", '{"tta_angles": [0]}'), ("full", "{}")])
def test_make_demo_predicts_without_the_tta_only_on_the_cpu_demo(profile: str, infer_overrides: str) -> None:
    make = ["make", "-C", str(REPO_ROOT), "--no-print-directory", "-n", "-o", "install", "DATA_DIR=/data"]
    dry = subprocess.run([*make, f"PROFILE={profile}", "demo"], capture_output=True, text=True)
    assert dry.returncode == 0 and f"--set 'INFER_OVERRIDES={infer_overrides}'" in dry.stdout
