"""What ``make preflight`` found, for people and for tools: a table with a verdict per line, the ``make train-all``
commands with the overrides each preset needs, one summary line (the README shows it), a JSON file and a bar chart
of time and memory per preset."""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from kaggle_utils.core.paths import PREFLIGHT_JSON, PREFLIGHT_PNG
from kaggle_utils.dev.preflight_search import FITS, FITS_WITH, NO_FIT
from kaggle_utils.evaluation.viz import save_figure

TRAIN, INFERENCE, END_TO_END = "train", "inference", "end-to-end"
RUNS, FAILS, SKIPPED = "runs", "fails", "skipped"
"""The end-to-end pass's verdicts."""

ROOM_SHARE = 0.5
"""A preset whose peak stays under this share of the card's memory fits with room (a larger batch would fit)."""

VERDICT_COLOURS = {FITS: "#3cb44b", FITS_WITH: "#f58231", NO_FIT: "#e6194b"}


@dataclass
class Line:
    """One line of the table: a preset's training, an inference set-up, or the end-to-end pass."""

    name: str
    kind: str  # TRAIN, INFERENCE or END_TO_END
    verdict: str
    shape: str = ""
    ms: float | None = None  # per training step, or per study for inference
    peak_gib: float | None = None
    hours: float | None = None  # the whole recipe of a preset (its folds), or the hidden test for inference
    overrides: dict[str, Any] = field(default_factory=dict)  # what the preset needs beyond the user's own
    note: str = ""
    tries: list[dict[str, Any]] = field(default_factory=list)  # a preset's search: each try's overrides and figures


@dataclass
class Report:
    """Everything one preflight run found, on one device."""

    device: str
    card_gib: float | None  # the card's memory (or the limit set with --memory-gb); None on the CPU
    profile: str
    on_gpu: bool
    n_studies: int
    folds: list[int]
    user_overrides: dict[str, Any]
    lines: list[Line]

    def of_kind(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.kind == kind]

    @property
    def recipe_hours(self) -> float:
        return sum(line.hours or 0.0 for line in self.of_kind(TRAIN))

    @property
    def caveat(self) -> str:
        if self.on_gpu:
            return ""
        return (
            f"CPU, {self.profile} profile (a tiny backbone, small images): these figures are not a GPU's; "
            "the run checks that preflight works. On a GPU it runs the full profile."
        )

    def commands(self) -> list[str]:
        """``make train-all`` per group of presets that need the same overrides (the user's and the ones found)."""
        groups: dict[str, list[str]] = {}
        for line in self.of_kind(TRAIN):
            if line.verdict != NO_FIT:
                overrides = json.dumps({**self.user_overrides, **line.overrides})
                groups.setdefault(overrides, []).append(line.name)
        folds = " ".join(map(str, self.folds))
        return [
            f'make train-all TRAIN_PRESETS="{" ".join(names)}" TRAIN_FOLDS="{folds}" TRAIN_OVERRIDES={shlex.quote(o)}'
            for o, names in groups.items()
        ]

    def summary(self) -> str:
        """One line: the verdicts, the recipe's hours, inference's and the end-to-end pass's."""
        train = self.of_kind(TRAIN)
        counts = {v: sum(line.verdict == v for line in train) for v in (FITS, FITS_WITH, NO_FIT)}
        card = f" ({self.card_gib:.0f} GiB)" if self.card_gib else ""
        parts = [
            f"{self.device}{card}, profile {self.profile}: {counts[FITS]} of {len(train)} presets fit, "
            f"{counts[FITS_WITH]} with overrides, {counts[NO_FIT]} do not",
            f"the recipe ({len(train)} presets x {len(self.folds)} folds, {self.n_studies:,} studies) "
            f"{self.recipe_hours:.1f} h",
        ]
        inference = self.of_kind(INFERENCE)
        if inference:
            here, *kaggle = inference
            hours = ", ".join(f"{line.hours:.2f} h on {line.name.split(', ')[-1]}" for line in kaggle if line.hours)
            peak = f", peak {here.peak_gib:.1f} GiB" if here.peak_gib is not None else ""
            parts.append(
                f"inference {(here.ms or 0) / 1000:.2f} s per study{peak}: {here.hours or 0:.2f} h here, {hours}"
            )
        parts += [f"end-to-end {line.verdict}" for line in self.of_kind(END_TO_END)]
        return ("[not a GPU's figures] " if not self.on_gpu else "") + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {**values, "caveat": self.caveat, "commands": self.commands(), "summary": self.summary()}

    def save(self, folder: Path) -> tuple[Path, Path]:
        """``preflight.json`` and ``preflight.png`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        json_path = folder / PREFLIGHT_JSON
        json_path.write_text(json.dumps(self.to_json(), indent=1))
        figure = chart(self)
        save_figure(figure, folder / PREFLIGHT_PNG)
        plt.close(figure)
        return json_path, folder / PREFLIGHT_PNG


def _number(value: float | None, width: int, decimals: int) -> str:
    return f"{'-' if value is None else f'{value:.{decimals}f}':>{width}}"


def format_table(report: Report) -> str:
    """The table: one line per preset, inference set-up and the end-to-end pass, each with its verdict."""
    folds = " ".join(map(str, report.folds))
    card = f", {report.card_gib:.1f} GiB" if report.card_gib else ""
    lines = [
        f"preflight on {report.device}{card}: profile {report.profile}; the recipe for {report.n_studies:,} studies, "
        f"folds {folds}; training ms per step (batch on the card), inference ms per study",
    ]
    if report.caveat:
        lines.append(report.caveat)
    lines.append(f"{'line':<22} {'shape':<24} {'ms':>9} {'peak GiB':>9} {'hours':>7}  {'verdict':<26} overrides / note")
    for line in report.lines:
        extra = " ".join(filter(None, [json.dumps(line.overrides) if line.overrides else "", line.note]))
        lines.append(
            f"{line.name:<22} {line.shape:<24} {_number(line.ms, 9, 1)} {_number(line.peak_gib, 9, 1)} "
            f"{_number(line.hours, 7, 2)}  {line.verdict:<26} {extra}".rstrip()
        )
    lines.append(f"{'the recipe, one card':<22} {'':<24} {'':>9} {'':>9} {report.recipe_hours:7.2f}")
    return "\n".join(lines)


def chart(report: Report) -> plt.Figure:
    """Bars per preset: projected hours of the recipe (ms per step written on them) and peak memory against the
    card's, coloured by verdict."""
    train = report.of_kind(TRAIN)
    names = [line.name for line in train]
    colours = [VERDICT_COLOURS.get(line.verdict, "grey") for line in train]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 0.45 * len(train) + 1.8), sharey=True)
    hours = [line.hours or 0.0 for line in train]
    bars = time_ax.barh(names, hours, color=colours)
    time_ax.bar_label(bars, [f"{_number(line.ms, 0, 0)} ms/step" for line in train], padding=3, fontsize=7)
    time_ax.set_xlabel(f"hours, {len(report.folds)} folds x {report.n_studies:,} studies")
    time_ax.invert_yaxis()
    if report.on_gpu:
        memory_ax.barh(names, [line.peak_gib or 0.0 for line in train], color=colours)
        if report.card_gib:
            memory_ax.axvline(report.card_gib, color="black", ls="--", lw=1, label=f"card {report.card_gib:.0f} GiB")
            memory_ax.legend(loc="lower right", fontsize=7)
    else:
        memory_ax.text(0.5, 0.5, "no GPU memory on the CPU", ha="center", va="center", transform=memory_ax.transAxes)
    memory_ax.set_xlabel("peak GPU memory of a training step (GiB)")
    shown = dict.fromkeys(line.verdict for line in train)
    handles = [Patch(color=VERDICT_COLOURS.get(v, "grey"), label=v) for v in shown]
    time_ax.legend(handles=handles, loc="lower right", fontsize=7)
    title = f"preflight on {report.device}, profile {report.profile}: {report.recipe_hours:.1f} h on one card"
    fig.suptitle(title + ("" if report.on_gpu else "\n(CPU: not a GPU's figures)"), fontsize=10)
    fig.tight_layout()
    return fig
