"""Before a long run: whether the recipe fits this card, how long it will take, and whether the pipeline runs at its
full shapes. ``make preflight`` or ``python -m kaggle_utils.dev.preflight [--studies 1975] [--folds 0 1 2 3]``.

On a GPU, with the full profile and no pretrained weights:

- **training**: a few steps of every preset (GPU augmentation, forward, backward, clipping, AdamW) with its batch,
  precision, grad scaler and channels_last, on a batch of real shapes already on the card (``bench_train``'s
  cached arrays and stepper): ms per step and per validation batch, peak memory. A preset that runs out of memory is
  tried with gradient checkpointing, then smaller batches (``preflight_search``); the recipe's hours follow for N
  studies and the chosen folds (``preflight_time``);
- **inference**: the full ensemble (every preset x 4 folds, untrained checkpoints in fp16 as the weights dataset
  holds them) on a few synthetic studies in the kernel's precision (``bench_infer``): ms per study, peak memory, the
  hidden test (750 studies) on this card, and projected on Kaggle's T4 and T4 x2;
- **end to end**: notebooks 01-04 on a few synthetic studies, fold 0, one epoch, at the same profile, so that a
  crash only the full shapes reach shows in minutes.

Then the table with a verdict per line, the ``make train-all`` commands with the overrides each preset needs, a
summary line, and ``preflight.json`` and ``preflight.png`` in ``--out`` (default ``WORK_DIR/preflight``).

Without a GPU the same code runs the smoke profile in seconds (inference with one fold, the end-to-end pass only
with ``--e2e on``, as the notebook tests run it) and says that its figures are not a GPU's. ``--memory-gib`` caps
what this process may take on the card (a 16 GB T4's 15 GiB on a larger card, say), so the search runs as there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kaggle_utils.core import parameters, presets
from kaggle_utils.core.config import InferConfig, PreprocessConfig, TrainConfig, apply_overrides
from kaggle_utils.core.devices import autocast_dtype
from kaggle_utils.core.paths import NOTEBOOKS_DIR, Paths
from kaggle_utils.core.presets import preset
from kaggle_utils.dev.bench_arrays import CACHED_SLICES, CachedArrays
from kaggle_utils.dev.bench_infer import (
    INFERENCE_PRESETS,
    KAGGLE_SETUPS,
    project,
    samples_per_study,
    time_inference,
    write_bench_models,
)
from kaggle_utils.dev.bench_train import (
    Stepper,
    batch_shape,
    median_ms,
    peak_memory_gib,
    reset_memory,
)
from kaggle_utils.dev.preflight_report import (
    END_TO_END,
    FAILS,
    INFERENCE,
    ROOM_SHARE,
    RUNS,
    SKIPPED,
    TRAIN,
    Line,
    Report,
    format_table,
)
from kaggle_utils.dev.preflight_search import FITS, NO_FIT, Fit, Measurement, out_of_memory, search
from kaggle_utils.dev.preflight_time import COMPETITION_STUDIES, StepTimes, recipe_hours
from kaggle_utils.dev.runner import run_notebook
from kaggle_utils.dev.synthetic import make_dataset
from kaggle_utils.io import competition

HIDDEN_TEST_STUDIES = 750
KAGGLE_T4_GIB = 15.0
"""What a 16 GB T4 leaves to PyTorch."""
E2E_NOTEBOOKS = ("01_preprocess", "02_train_stage1", "03_train_stage2", "04_inference")


# --- what a run does ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One run's settings: the command line's, with the defaults of the device (a GPU's full figures, or the CPU's
    seconds-long check of the same code at the smoke profile: one fold and no TTA rotations for inference)."""

    device: torch.device
    profile: str
    presets: list[str]
    folds: list[int]
    studies: int
    overrides: dict[str, Any]  # the user's TrainConfig overrides (TRAIN_OVERRIDES), tried as they would train
    steps: int
    warmup: int
    infer: bool
    infer_studies: int
    infer_folds: int
    infer_cfg: InferConfig
    e2e: bool
    e2e_studies: int
    seed: int
    memory_gib: float | None
    out: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> Plan:
        gpu = device.type == "cuda"
        profile = args.profile if args.profile != "auto" else ("full" if gpu else "smoke")
        given = parameters.parsed_overrides(args)
        first = preset(args.presets[0], profile, given)  # every preset takes every override (as train-all does)
        return cls(
            device=device,
            profile=profile,
            presets=args.presets,
            folds=args.folds,
            studies=args.studies,
            overrides={key: getattr(first, key) for key in given},  # typed: "3" from --set epochs=3 is 3
            steps=args.steps or (5 if gpu else 1),
            warmup=args.warmup if args.warmup is not None else (2 if gpu else 0),
            infer=args.infer == "on",
            infer_studies=args.infer_studies or (3 if gpu else 1),
            infer_folds=args.infer_folds or (4 if gpu else 1),
            infer_cfg=InferConfig() if gpu else InferConfig(tta_angles=(0.0,)),
            e2e=args.e2e == "on" or (args.e2e == "auto" and gpu),
            e2e_studies=args.e2e_studies,
            seed=args.seed,
            memory_gib=args.memory_gib,
            out=args.out or Paths.resolve().preflight_dir,
        )

    @property
    def configs(self) -> list[TrainConfig]:
        """The presets as the recipe trains them, without pretrained weights (none are needed to time them)."""
        return [preset(name, self.profile, {"pretrained": False, **self.overrides}) for name in self.presets]


# --- training --------------------------------------------------------------------------------------
def release(device: torch.device) -> None:
    """Give a finished or failed try's memory back: its cycles collected, the allocator's cache emptied."""
    gc.collect()
    reset_memory(device)


def validate(step: Stepper, batch: dict) -> None:
    """A validation batch as the loop evaluates it (the stage's predictor, no gradients, inference precision)."""
    step.model.eval()
    step.task.predict(step.model, batch)
    step.model.train()


def measure_step(cfg: TrainConfig, data: CachedArrays, device: torch.device, steps: int, warmup: int) -> Measurement:
    """ms per training step and per validation batch of ``cfg`` (a fresh model), and the training's peak memory."""
    reset_memory(device)
    step = Stepper.build(cfg, device)
    batch = data.first_batch(cfg, device)
    train_ms = median_ms(lambda: step(batch), device, steps, warmup)
    peak = peak_memory_gib(device)
    eval_ms = median_ms(lambda: validate(step, batch), device, steps, warmup)
    return Measurement(train_ms, eval_ms, peak)


def room_note(peak_gib: float | None, card_gib: float | None) -> str:
    if peak_gib is None or not card_gib:
        return ""
    share = peak_gib / card_gib
    return f"room: peak {share:.0%} of the card" if share < ROOM_SHARE else f"peak {share:.0%} of the card"


def training_line(fit: Fit, card_gib: float | None, n_studies: int, folds: list[int], n_folds: int) -> Line:
    """A preset's line: its verdict, step time, peak memory and the recipe's hours with the overrides it needs."""
    cfg = apply_overrides(fit.cfg, fit.overrides)
    tries = [
        {"overrides": a.overrides, "fits": a.fits, **(vars(a.measurement) if a.measurement else {})}
        for a in fit.attempts
    ]
    measured = fit.measurement
    if measured is None:
        note = "out of memory at batch 1, with gradient checkpointing too"
        return Line(cfg.name, TRAIN, NO_FIT, batch_shape(fit.cfg), note=note, tries=tries)
    hours = recipe_hours(cfg, StepTimes(measured.train_ms, measured.eval_ms), n_studies, folds, n_folds)
    note = fit.lr_note or room_note(measured.peak_gib, card_gib)
    shape = batch_shape(cfg)
    return Line(
        cfg.name, TRAIN, fit.verdict, shape, measured.train_ms, measured.peak_gib, hours, fit.overrides, note, tries
    )


def training_lines(plan: Plan, card_gib: float | None, tmp: Path) -> list[Line]:
    """Every preset's search and line, printed as each is done."""
    configs, device = plan.configs, plan.device
    data = CachedArrays.write(tmp / "arrays", max(c.batch_size for c in configs), CACHED_SLICES, distinct=2)
    n_folds = PreprocessConfig().n_folds
    lines = []
    for cfg in configs:
        fit = search(cfg, lambda c: measure_step(c, data, device, plan.steps, plan.warmup), lambda: release(device))
        lines.append(training_line(fit, card_gib, plan.studies, plan.folds, n_folds))
        print(format_table_row(lines[-1]), flush=True)
    return lines


def format_table_row(line: Line) -> str:
    ms = "-" if line.ms is None else f"{line.ms:.1f} ms"
    return f"  {line.name}: {line.verdict} ({line.shape}, {ms}) {json.dumps(line.overrides) if line.overrides else ''}"


# --- inference -------------------------------------------------------------------------------------
def inference_lines(plan: Plan, data_dir: Path, work: Path) -> list[Line]:
    """The ensemble of every preset x ``plan.infer_folds`` folds on ``plan.infer_studies`` studies, in the kernel's
    precision, then the hidden test on this card and projected on Kaggle's T4 and T4 x2."""
    paths, device = Paths(data_dir, work), plan.device
    series = competition.series_table(paths, "train")
    series = series[series["study_id"].isin(sorted(series["study_id"].unique())[: plan.infer_studies])]
    write_bench_models(paths, paths, series, plan.profile, plan.infer_folds)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[autocast_dtype(device, True)]
    shape = f"{len(presets.RECIPE_PRESETS)} presets x {plan.infer_folds} folds"
    here = f"inference, {'this card' if device.type == 'cuda' else 'CPU'}"
    try:
        timing = time_inference(paths, series, device, PreprocessConfig(), plan.infer_cfg, None, True, here)
    except RuntimeError as error:
        if not out_of_memory(error):
            raise
        release(device)
        return [Line(here, INFERENCE, NO_FIT, shape, note="out of memory: lower INFER_OVERRIDES' batch_size")]
    per_study = sum(timing.seconds.values()) / timing.n_studies
    peak = None if timing.peak_gb is None else timing.peak_gb * 1e9 / 2**30  # bench_infer counts in GB
    note = f"{precision}, {len(plan.infer_cfg.tta_angles)} TTA; {HIDDEN_TEST_STUDIES} studies in the hours column"
    lines = [
        Line(here, INFERENCE, FITS, shape, per_study * 1000, peak, per_study * HIDDEN_TEST_STUDIES / 3600, {}, note)
    ]
    counts = samples_per_study(series, timing)
    for setup in (s for s in KAGGLE_SETUPS if s.precision == "fp16"):  # the kernel on one T4 and on both of a T4 x2
        projection = project(timing, counts, setup, HIDDEN_TEST_STUDIES)
        share = projection.total_h / projection.limit_h
        too_big = peak is not None and peak > KAGGLE_T4_GIB
        verdict = NO_FIT if share > 1 or too_big else FITS
        note = f"projected (bench-infer): {share:.0%} of the {projection.limit_h:g} h limit"
        note += f"; peak {peak:.1f} GiB > a T4's {KAGGLE_T4_GIB:g}" if too_big else ""
        ms = sum(projection.per_study.values()) * 1000
        full = f"{len(INFERENCE_PRESETS)} presets x {setup.n_folds} folds"  # the projection's is the full ensemble
        lines.append(
            Line(f"inference, {setup.label}", INFERENCE, verdict, full, ms, None, projection.total_h, {}, note)
        )
    return lines


# --- end to end ------------------------------------------------------------------------------------
def end_to_end(data_dir: Path, work: Path, profile: str, overrides: dict[str, Any], out: Path) -> Line:
    """Notebooks 01-04 on ``data_dir`` into ``work`` at ``profile``, fold 0, one epoch, no pretrained weights; a
    failing notebook's executed copy is kept in ``out``."""
    train_overrides = {**overrides, "epochs": 1, "pretrained": False}
    env = {"DATA_DIR": str(data_dir), "WORK_DIR": str(work), "PROFILE": profile, "FOLDS": "[0]", "PRESETS": "[]"}
    env["TRAIN_OVERRIDES"] = json.dumps(train_overrides)
    seconds = {}
    for name in E2E_NOTEBOOKS:
        started, executed = time.perf_counter(), work / "executed" / f"{name}.ipynb"
        try:
            run_notebook(NOTEBOOKS_DIR / f"{name}.py", executed, env, echo=False)
        except Exception as error:  # a failing cell (CellExecutionError), a dead kernel or a timeout
            kept = out / f"e2e_failed_{name}.ipynb"
            if executed.exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(executed, kept)
            last = str(error).strip().splitlines()[-1:] or [type(error).__name__]
            return Line("end-to-end", END_TO_END, FAILS, note=f"{name}: {last[0][:200]} (see {kept.name})")
        seconds[name] = time.perf_counter() - started
    note = ", ".join(f"{name.split('_')[0]} {s:.0f} s" for name, s in seconds.items())
    return Line("end-to-end", END_TO_END, RUNS, "fold 0, 1 epoch", hours=sum(seconds.values()) / 3600, note=note)


# --- the run ---------------------------------------------------------------------------------------
def card_memory(device: torch.device, memory_gib: float | None) -> tuple[str, float | None]:
    """The device's name and the memory preflight may use (``memory_gib`` caps it on a larger card)."""
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if memory_gib is None or memory_gib >= total:
        return name, total
    torch.cuda.set_per_process_memory_fraction(memory_gib / total, device)
    return f"{name} limited to {memory_gib:g} GiB", memory_gib


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Whether the full recipe fits this card, and how long it takes.")
    parser.add_argument("--presets", nargs="+", default=list(presets.RECIPE_PRESETS))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3], help="folds the recipe trains")
    parser.add_argument("--studies", type=int, default=COMPETITION_STUDIES, help="training studies of the recipe")
    parser.add_argument("--profile", default="auto", help="full on a GPU, smoke on the CPU (default)")
    parser.add_argument("--steps", type=int, help="timed steps per try (default 5 on a GPU, 1 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2 on a GPU, 0 on the CPU)")
    parser.add_argument("--memory-gib", type=float, help="use at most this much of the card (as a smaller card)")
    parser.add_argument("--infer", choices=["on", "off"], default="on", help="time the inference ensemble")
    parser.add_argument("--infer-studies", type=int, help="studies timed (default 3 on a GPU, 1 on the CPU)")
    parser.add_argument("--infer-folds", type=int, help="folds of the ensemble (default 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--e2e", choices=["auto", "on", "off"], default="auto", help="auto: on a GPU only")
    parser.add_argument("--e2e-studies", type=int, default=8, help="synthetic training studies of the e2e pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic studies")
    parser.add_argument("--out", type=Path, help="folder of preflight.json and .png (default WORK_DIR/preflight)")
    parameters.add_override_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    plan = Plan.from_args(parse_args(argv), torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = plan.device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True  # as training runs: input shapes are fixed within a run
    name, card_gib = card_memory(plan.device, plan.memory_gib)
    print(f"preflight on {name}, torch {torch.__version__}, profile {plan.profile}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        lines = training_lines(plan, card_gib, tmp)
        n_train, n_test = (plan.e2e_studies, 2) if plan.e2e else (plan.infer_studies, 0)
        workers = min(n_train + n_test, os.cpu_count() or 1)
        data_dir = make_dataset(tmp / "data", n_train, n_test, plan.seed, workers, progress=False)
        if plan.infer:
            lines += inference_lines(plan, data_dir, tmp / "infer")
        if plan.e2e:
            lines.append(end_to_end(data_dir, tmp / "e2e", plan.profile, plan.overrides, plan.out))
        else:
            note = "the notebook tests run this path at the smoke profile; --e2e on runs it here"
            lines.append(Line("end-to-end", END_TO_END, SKIPPED, note=note))
    report = Report(name, card_gib, plan.profile, gpu, plan.studies, plan.folds, plan.overrides, lines)
    show(report, plan.out)
    return report


def show(report: Report, out: Path) -> None:
    """Print the table, the commands and the summary line; save the JSON and the chart."""
    print()
    print(format_table(report))
    print("\nto train the recipe:" if report.commands() else "\nno preset fits this card")
    for command in report.commands():
        print(f"  {command}")
    json_path, png_path = report.save(out)
    print(f"\n{report.summary()}\nsaved: {json_path}, {png_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
