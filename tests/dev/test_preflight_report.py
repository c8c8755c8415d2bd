"""The preflight report: verdicts per line, the train-all commands, the summary line, the JSON and the chart."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from kaggle_utils.dev.preflight_report import END_TO_END, INFERENCE, RUNS, TRAIN, Line, Report, format_table
from kaggle_utils.dev.preflight_search import FITS, FITS_WITH, NO_FIT


def gpu_report() -> Report:
    lines = [
        Line("stage1_t1", TRAIN, FITS, "32 x 8 x 256px", 133.0, 21.0, 2.5, note="room: peak 27 % of the card"),
        Line("fo", TRAIN, FITS_WITH, "32 x 5 x 24 x 96px", 300.0, 14.0, 6.0, {"grad_checkpointing": True}),
        Line("su", TRAIN, FITS_WITH, "32 x 5 x 24 x 96px", 310.0, 14.5, 6.5, {"grad_checkpointing": True}),
        Line(
            "sp2",
            TRAIN,
            FITS_WITH,
            "16 x 5 x 5 x 256px",
            200.0,
            14.9,
            4.0,
            {"grad_checkpointing": True, "batch_size": 16},
        ),
        Line("ax", TRAIN, NO_FIT, "32 x 3 x 5 x 128px", note="out of memory"),
        Line("inference, this card", INFERENCE, FITS, "8 presets x 4 folds", 4000.0, 9.0, 0.83),
        Line("inference, 1x T4 fp16", INFERENCE, FITS, "8 presets x 4 folds", 5900.0, None, 1.23),
        Line("inference, 2x T4 fp16", INFERENCE, FITS, "8 presets x 4 folds", 3000.0, None, 0.63),
        Line("end-to-end", END_TO_END, RUNS, "fold 0, 1 epoch", hours=0.02, note="01 10 s"),
    ]
    return Report("Tesla T4", 15.0, "full", True, 1975, [0, 1, 2, 3], {"weights_file": "/w/b5.safetensors"}, lines)


def test_commands_group_presets_by_the_overrides_they_need_with_the_users_own() -> None:
    commands = gpu_report().commands()
    assert len(commands) == 3  # as it is; with checkpointing; with checkpointing and a smaller batch; ax is left out
    first = shlex.split(commands[0])
    assert first[:2] == ["make", "train-all"] and "TRAIN_PRESETS=stage1_t1" in first
    assert json.loads(first[-1].split("=", 1)[1]) == {"weights_file": "/w/b5.safetensors"}
    second = dict(arg.split("=", 1) for arg in shlex.split(commands[1])[2:])
    assert second["TRAIN_PRESETS"] == "fo su" and second["TRAIN_FOLDS"] == "0 1 2 3"
    assert json.loads(second["TRAIN_OVERRIDES"]) == {"weights_file": "/w/b5.safetensors", "grad_checkpointing": True}
    assert "batch_size" in commands[2] and "ax" not in " ".join(commands)


def test_the_summary_counts_verdicts_and_adds_up_the_recipe() -> None:
    report = gpu_report()
    assert report.recipe_hours == 19.0
    summary = report.summary()
    assert summary.startswith("Tesla T4 (15 GiB), profile full: 1 of 5 presets fit, 3 with overrides, 1 do not")
    assert "(5 presets x 4 folds, 1,975 studies) 19.0 h" in summary
    assert (
        "inference 4.00 s per study, peak 9.0 GiB: 0.83 h here, 1.23 h on 1x T4 fp16, 0.63 h on 2x T4 fp16" in summary
    )
    assert summary.endswith("end-to-end runs") and "not a GPU" not in summary


def test_the_table_has_a_verdict_per_line_and_the_cpu_says_its_figures_are_not_a_gpus() -> None:
    report = gpu_report()
    table = format_table(report).splitlines()
    for line in report.lines:
        row = next(r for r in table if r.startswith(f"{line.name} "))
        assert line.verdict in row
    assert '{"grad_checkpointing": true, "batch_size": 16}' in next(r for r in table if r.startswith("sp2 "))
    assert table[-1].split()[-1] == "19.00"
    cpu = Report("CPU", None, "smoke", False, 1975, [0], {}, report.lines[:1])
    assert "not a GPU's" in format_table(cpu) and cpu.summary().startswith("[not a GPU's figures] CPU, profile smoke")


def test_the_json_and_the_chart_are_saved_side_by_side(tmp_path: Path) -> None:
    json_path, png_path = gpu_report().save(tmp_path / "preflight")
    assert json_path.parent == png_path.parent and png_path.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(json_path.read_text())
    assert saved["device"] == "Tesla T4" and saved["card_gib"] == 15.0 and saved["caveat"] == ""
    assert [(line["name"], line["verdict"]) for line in saved["lines"]][:5] == [
        ("stage1_t1", FITS),
        ("fo", FITS_WITH),
        ("su", FITS_WITH),
        ("sp2", FITS_WITH),
        ("ax", NO_FIT),
    ]
    assert saved["lines"][3]["overrides"] == {"grad_checkpointing": True, "batch_size": 16}
    assert saved["summary"] == gpu_report().summary() and len(saved["commands"]) == 3
    cpu = Report("CPU", None, "smoke", False, 10, [0], {}, gpu_report().lines[:2])
    _, cpu_png = cpu.save(tmp_path / "cpu")  # no memory panel without a GPU
    assert cpu_png.stat().st_size > 0
