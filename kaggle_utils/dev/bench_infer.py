"""Benchmark: inference time per study, and its projection on Kaggle's T4.

``run.Inference.predict_table`` on the sagittal series of N studies and their axial branch, with a timer around each
stage (DICOM reading, stage-1 volume, keypoints, cropping, stage 2 with all TTA rotations in one batch; the axial
series' reading, their stacks and crops, and their localiser and classifier), on the CPU
with the checkpoints of WORK_DIR/models when it has them, else small ones written to a temporary folder. On a
GPU, the real ensemble (8 presets x 4 folds of ``hgnetv2_b5``, untrained) per study in fp32 and under autocast,
side by side, with the peak GPU memory. Then a projection of the full ensemble on 750 hidden studies on one T4
in fp16 (what the kernel runs) and fp32, and on both cards of a T4 x2: the CPU stages as measured, the GPU stages
from the H100 anchor of the seed's shapes and T4/H100 ratios from the cards' published peaks, all printed with
the table.

Run: ``python -m kaggle_utils.dev.bench_infer [--studies 8] [--build-models]`` or ``make bench-infer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kaggle_utils.core.config import InferConfig, PreprocessConfig, TrainConfig, apply_overrides
from kaggle_utils.core.constants import LEVEL_SLUGS, TTA_ANGLES
from kaggle_utils.core.paths import Paths
from kaggle_utils.core.presets import FULL_PRESETS, RECIPE_PRESETS, preset
from kaggle_utils.core.views import LEVEL_VIEW, view_named
from kaggle_utils.dev.bench_preprocess import bench_data
from kaggle_utils.inference import axial_branch, ensemble, run
from kaggle_utils.io import competition, tables
from kaggle_utils.io.dicom import read_header
from kaggle_utils.models.checkpoints import half_precision_copy, save_checkpoint
from kaggle_utils.models.networks import build_model
from kaggle_utils.preprocessing import axial_levels, axial_samples

# --- inference benchmark -------------------------------------------------------------------------
STAGES: dict[str, str] = {
    "read": "DICOM reading",
    "volume": "stage 1 volume",
    "keypoints": "stage 1 keypoints",
    "crop": "cropping",
    "classify": "stage 2, TTA batched",
    "axial_read": "axial DICOM reading",
    "axial_crop": "axial stacks, crops",
    "axial_models": "axial networks",
}
"""Timer keys of ``run.Inference.predict_table`` and their names in the tables."""

CPU_STAGES: tuple[str, ...] = ("read", "volume", "crop", "axial_read", "axial_crop")
"""Stages that run on the CPU whatever the device: their measured time carries over to the projection."""

H100_ANCHOR_MS, H100_ANCHOR_IMAGES = 31.0, len(LEVEL_SLUGS) * 5 * len(TTA_ANGLES)
"""The solution's model shapes timed on one H100 (hgnetv2_b5, fp16, channels_last): one T2 series at 256 px,
5 levels x 5 frames, the 9 TTA rotations in one batch."""


@dataclass(frozen=True)
class Card:
    """A card's published peaks (NVIDIA's datasheets): dense fp16 tensor-core and fp32 TFLOPS, memory GB/s."""

    name: str
    fp16_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float


H100 = Card("H100 SXM", fp16_tflops=989.0, fp32_tflops=67.0, bandwidth_gbs=3350.0)
T4 = Card("T4", fp16_tflops=65.0, fp32_tflops=8.1, bandwidth_gbs=320.0)  # no tensor cores for fp32
PRECISIONS = ("fp16", "fp32")


def throughput_ratio(card: Card, reference: Card, precision: str) -> float:
    """``card`` at ``precision`` against ``reference`` in fp16 (the anchor's precision): the geometric mean of the
    compute-peak ratio and the bandwidth ratio, since these convnets are partly compute-, partly memory-bound.
    A T4 comes out at 1/12.6 of an H100 in fp16 and 1/35.8 in fp32."""
    compute = (card.fp16_tflops if precision == "fp16" else card.fp32_tflops) / reference.fp16_tflops
    return (compute * card.bandwidth_gbs / reference.bandwidth_gbs) ** 0.5


@dataclass(frozen=True)
class GpuAssumptions:
    """How the full ensemble's GPU time is projected; every value is printed with the projection."""

    precision: str = "fp16"  # what a T4 runs: fp16 autocast (``devices.autocast_dtype``)
    cards: int = 1  # Kaggle's "T4 x2" splits the studies over both (``run.Inference.predict_table``)
    h100_ms_per_image: float = H100_ANCHOR_MS / H100_ANCHOR_IMAGES
    reference_px: int = 256  # images of another size cost in proportion to their pixels
    n_folds: int = 4
    n_tta: int = len(TTA_ANGLES)

    @property
    def t4_over_h100(self) -> float:
        return throughput_ratio(T4, H100, self.precision)

    @property
    def t4_ms_per_image(self) -> float:
        return self.h100_ms_per_image / self.t4_over_h100

    @property
    def label(self) -> str:
        return f"{self.cards}x T4 {self.precision}"


KAGGLE_SETUPS = (GpuAssumptions("fp16"), GpuAssumptions("fp32"), GpuAssumptions("fp16", cards=2))
"""The projected set-ups: one T4 as the kernel runs it (fp16), in fp32, and both cards of a T4 x2."""


INFERENCE_PRESETS = RECIPE_PRESETS
"""The presets inference runs by default: the localisers (T1, T2, axial) and the classifiers (fs, sp1, sp2, su, ax)."""


def images_per_series(cfg: TrainConfig, gpu: GpuAssumptions) -> float:
    """Images one sample sends through one model, in reference-size images: stage 1 its frames once, stage 2
    every level's (an axial level: every crop's) frames once per TTA rotation. A sagittal sample is a series, an
    axial one a level of a series."""
    per_level = view_named(cfg.view).localised_per == "level"
    copies = 1 if cfg.stage == 1 else (3 if per_level else len(LEVEL_SLUGS)) * gpu.n_tta
    return copies * cfg.n_frames * (cfg.img_size / gpu.reference_px) ** 2


def gpu_stage(cfg: TrainConfig) -> str:
    """The timer stage a preset's forward passes fall in."""
    if view_named(cfg.view).localised_per == "level":
        return "axial_models"
    return "keypoints" if cfg.stage == 1 else "classify"


def full_images_per_study(samples_per_study: dict[str, float], gpu: GpuAssumptions) -> dict[str, float]:
    """Reference-size images per study through the full ensemble (every preset, every fold), by timer stage;
    ``samples_per_study``: sagittal series by view, and under "axial" the assigned levels of its axial series."""
    images = {"keypoints": 0.0, "classify": 0.0, "axial_models": 0.0}
    for cfg in (FULL_PRESETS[name] for name in INFERENCE_PRESETS):
        images[gpu_stage(cfg)] += images_per_series(cfg, gpu) * gpu.n_folds * samples_per_study.get(cfg.view, 0.0)
    return images


@dataclass
class InferTiming:
    """Seconds per stage of one inference run over ``n_studies`` studies on one device, and its peak GPU memory."""

    device: str
    n_studies: int
    seconds: dict[str, float] = field(default_factory=dict)
    peak_gb: float | None = None
    axial_levels: int = 0  # assigned levels of the studies' axial series that the axial branch ran on

    def per_study(self, stage: str) -> float:
        return self.seconds.get(stage, 0.0) / self.n_studies


@dataclass(frozen=True)
class Projection:
    """Seconds per study on Kaggle by stage, where each number comes from, and the total for the hidden test."""

    per_study: dict[str, float]
    n_studies: int = 750
    limit_h: float = 9.0

    @property
    def total_h(self) -> float:
        return sum(self.per_study.values()) * self.n_studies / 3600


def project(
    cpu: InferTiming, series_per_study: dict[str, float], gpu: GpuAssumptions, n_studies: int = 750
) -> Projection:
    """The full ensemble on ``gpu.cards`` T4s: CPU stages as measured (not overlapped with the GPU, not split over
    the cards' threads, which share the GIL while parsing DICOMs), GPU stages from the anchor, split over the cards."""
    per_study = {stage: cpu.per_study(stage) for stage in CPU_STAGES}
    for stage, images in full_images_per_study(series_per_study, gpu).items():
        per_study[stage] = images * gpu.t4_ms_per_image / 1000 / gpu.cards
    order = list(STAGES)
    return Projection(dict(sorted(per_study.items(), key=lambda kv: order.index(kv[0]))), n_studies)


def samples_per_study(series: pd.DataFrame, timing: InferTiming) -> dict[str, float]:
    """What the projection scales with: sagittal series per study by view, and under "axial" the assigned levels of
    the studies' axial series that ``timing``'s run predicted."""
    per_study = (series.groupby("view").size() / series["study_id"].nunique()).to_dict()
    per_study[LEVEL_VIEW] = timing.axial_levels / timing.n_studies
    return per_study


def format_timings(timings: list[InferTiming]) -> str:
    width = max(12, *(len(t.device) + 2 for t in timings))
    lines = [f"{'stage (s/study)':<22}" + "".join(f"{t.device:>{width}}" for t in timings)]
    for stage, name in STAGES.items():
        lines.append(f"{name:<22}" + "".join(f"{t.per_study(stage):{width}.3f}" for t in timings))
    lines.append(f"{'total':<22}" + "".join(f"{sum(t.seconds.values()) / t.n_studies:{width}.3f}" for t in timings))
    if any(t.peak_gb is not None for t in timings):
        peaks = ("-" if t.peak_gb is None else f"{t.peak_gb:.2f}" for t in timings)
        lines.append(f"{'peak GPU memory (GB)':<22}" + "".join(f"{p:>{width}}" for p in peaks))
    return "\n".join(lines)


def format_projection(projections: list[Projection], setups: list[GpuAssumptions], series: dict[str, float]) -> str:
    """The projected set-ups side by side, after the assumptions they rest on."""
    n, gpu = projections[0].n_studies, setups[0]
    ratios = ", ".join(f"1/{1 / throughput_ratio(T4, H100, p):.3g} in {p}" for p in PRECISIONS)
    lines = [
        f"projection: {n} hidden studies, full ensemble ({len(INFERENCE_PRESETS)} presets x {gpu.n_folds} folds, "
        f"{FULL_PRESETS['sp1'].backbone.split('.')[0]}, {gpu.n_tta} TTA), {projections[0].limit_h:g} h limit",
        "assumptions:",
        f"  H100, per {gpu.reference_px} px image: {H100_ANCHOR_MS:g} ms / {H100_ANCHOR_IMAGES} images "
        f"(5 levels x 5 frames x 9 TTA, one batch; measured on an H100, fp16) = {gpu.h100_ms_per_image:.3f} ms",
        f"  T4 throughput = {ratios} of an H100 in fp16: the geometric mean of the peak-compute ratio and the "
        "bandwidth ratio",
        f"    (NVIDIA datasheets: T4 {T4.fp16_tflops:g} TFLOPS fp16 tensor, {T4.fp32_tflops:g} fp32, "
        f"{T4.bandwidth_gbs:g} GB/s; {H100.name} {H100.fp16_tflops:g} TFLOPS fp16 dense, {H100.bandwidth_gbs:g} GB/s)",
        f"  other sizes cost in proportion to their pixels (96 px = {(96 / gpu.reference_px) ** 2:.2f} image); "
        "stage-1 frames once, stage-2 frames x 5 levels x TTA",
        "  per study as in the benchmark data: "
        + " + ".join(f"{v:.2f} {_samples(k)}" for k, v in sorted(series.items())),
        "  axial: stage-1 frames once per assigned level, stage-2 frames x 3 crops x TTA",
        "  full-ensemble images per study (256 px equivalents): "
        + ", ".join(f"{v:.0f} {STAGES[k]}" for k, v in full_images_per_study(series, gpu).items()),
        "  CPU stages as measured here, one process, not overlapped with the GPU nor split over 2 cards (pessimistic)",
        f"{'stage (s/study)':<22}" + "".join(f"{s.label:>14}" for s in setups),
    ]
    for stage, name in STAGES.items():
        lines.append(f"{name:<22}" + "".join(f"{p.per_study[stage]:14.3f}" for p in projections))
    lines.append(f"{'total (s/study)':<22}" + "".join(f"{sum(p.per_study.values()):14.3f}" for p in projections))
    lines.append(f"{f'{n} studies (h)':<22}" + "".join(f"{p.total_h:14.2f}" for p in projections))
    lines.append(f"{'share of the limit':<22}" + "".join(f"{p.total_h / p.limit_h:14.0%}" for p in projections))
    return "\n".join(lines)


def write_bench_models(
    paths: Paths, data_paths: Paths, series: pd.DataFrame, profile: str, n_folds: int = 1
) -> list[Path]:
    """Checkpoints of the presets inference runs (the six of the solution) at ``profile`` size for folds
    0..n_folds-1. Timing does not depend on the weights, but crops do depend on the keypoints: the stage-1 heads
    (the regression head) output the mean training keypoints of their view (so crop boxes are realistic), and the
    stage-2 weights stay random. Folds after the first are fp16 copies of it, as the weights dataset holds them (the
    same weights: an ensemble's cost, not its diversity). The axial localiser outputs the mean left and right
    subarticular points of the studies' assigned levels."""
    truth = tables.keypoints_table(data_paths, series)
    mean_points = {view: _mean_points(truth[truth["view"] == view]) for view in ("t1", "t2")}
    mean_points["axial"] = _mean_axial_points(data_paths, series, truth)
    written = []
    for name in INFERENCE_PRESETS:
        cfg = apply_overrides(preset(name, profile), {"pretrained": False})
        if cfg.stage == 1:
            # Only the regression head can be set to output fixed points (its bias); the heatmap head reads them off
            # feature maps, so an untrained one gives degenerate boxes. Same backbone, without the small decoder.
            cfg = apply_overrides(cfg, {"model": "keypoint"})
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
        if cfg.stage == 1:
            _predict_constant(model, mean_points[cfg.view])
        first = paths.checkpoint(name, 0, cfg.seed)
        sidecar = save_checkpoint(model, cfg, first, fold=0, metrics={}, seconds=0.0, extra={"bench": "untrained"})
        written.append(first)
        del model
        for fold in range(1, n_folds):
            path = paths.checkpoint(name, fold, cfg.seed)
            half_precision_copy(first, path)
            path.with_suffix(".json").write_text(json.dumps({**sidecar, "fold": fold}, indent=1))
            written.append(path)
    return written


def _mean_points(keypoints: pd.DataFrame) -> np.ndarray:
    """(5, 2, 2) mean relative keypoints of a sagittal keypoint table."""
    return np.mean([tables.series_points(keypoints, s) for s in keypoints["series_id"].unique()], axis=0)


def _mean_axial_points(data_paths: Paths, series: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """(2, 2) mean left and right subarticular points of the levels the true Sagittal T2 keypoints assign."""
    levels, _ = axial_levels.build_level_table(data_paths, "train", series, truth, 3.0, progress=False)
    samples = axial_samples.points_by_level(axial_samples.keypoints_table(data_paths, levels)[0])
    return np.mean(list(samples.values()), axis=0) if samples else np.array([[0.55, 0.5], [0.45, 0.5]])


def _predict_constant(model: torch.nn.Module, points: np.ndarray) -> None:
    """Make a stage-1 model output fixed relative points: zero weights, bias = logit of the points."""
    mean = torch.as_tensor(np.asarray(points).reshape(-1), dtype=torch.float32).clamp(0.01, 0.99)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.log(mean / (1 - mean)))


def _samples(view: str) -> str:
    return "axial levels" if view_named(view).localised_per == "level" else f"{view.upper()} series"


def in_precision(models: ensemble.ModelSet, amp: bool) -> ensemble.ModelSet:
    """The same networks predicting under autocast (``amp``: fp16 on a T4, bf16 from Ampere on) or in fp32."""

    def switched(loaded: ensemble.LoadedModel) -> ensemble.LoadedModel:
        cfg = dataclasses.replace(loaded.cfg, amp=amp)
        return dataclasses.replace(loaded, cfg=cfg, predictor=dataclasses.replace(loaded.predictor, cfg=cfg))

    out = ensemble.ModelSet()
    for bank, banks in ((out.stage1, models.stage1), (out.stage2, models.stage2)):
        for key, loaded in banks.items():
            bank[key] = [switched(m) for m in loaded]
    return out


def time_inference(
    paths: Paths,
    series: pd.DataFrame,
    device: torch.device,
    pre_cfg: PreprocessConfig,
    infer_cfg: InferConfig,
    folds: Sequence[int] | None = (0,),
    amp: bool = True,
    label: str = "",
) -> InferTiming:
    """Seconds per stage over ``series`` on ``device``, after one warm-up series (lazy CUDA and cuDNN set-up), with
    the peak GPU memory of the timed run (the loaded models included)."""
    models = in_precision(ensemble.load_models(paths, None if folds is None else list(folds), device), amp)
    label = label or device.type
    axial = axial_branch.axial_series_ids(paths, "train")
    run.Inference(paths, models, pre_cfg, infer_cfg).predict_table(series.iloc[:1], axial, f"warm-up {label}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = run.StageTimer()
    timed = run.Inference(paths, models, pre_cfg, infer_cfg, timer=timer)
    _, levels = timed.predict_table(series, axial, f"bench {label}")
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    assigned = len(
        axial_branch.axial_points(axial_branch.split_axial(levels, models)[1])
    )  # one row per series and level
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return InferTiming(label, series["study_id"].nunique(), dict(timer.seconds), peak, assigned)


def gpu_timings(
    paths: Paths, series: pd.DataFrame, device: torch.device, pre_cfg: PreprocessConfig, infer_cfg: InferConfig
) -> list[InferTiming]:
    """The ensemble of ``paths`` (every fold) on ``device`` in fp32 and under autocast, one after the other."""
    return [
        time_inference(paths, series, device, pre_cfg, infer_cfg, None, amp, f"{device.type} {name}")
        for name, amp in (("fp32", False), ("autocast", True))
    ]


def infer_main(argv: list[str] | None = None) -> tuple[list[InferTiming], list[Projection]]:
    parser = argparse.ArgumentParser(description="Inference benchmark per study, with a projection for a T4.")
    parser.add_argument("--studies", type=int, default=8, help="number of training studies")
    parser.add_argument("--data", type=Path, default=None, help="competition-layout folder (default: data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data when none is given")
    parser.add_argument("--work-dir", default=None, help="WORK_DIR whose models/ to time (default: WORK_DIR, work/)")
    parser.add_argument(
        "--build-models", action="store_true", help="time small untrained models even if WORK_DIR has some"
    )
    parser.add_argument("--profile", default="smoke", choices=["smoke", "demo"], help="size of the built models")
    parser.add_argument("--gpu-profile", default="full", help="size of the ensemble timed on a GPU (full: the real)")
    parser.add_argument("--gpu-folds", type=int, default=4, help="folds of the ensemble timed on a GPU")
    args = parser.parse_args(argv)
    pre_cfg, infer_cfg = PreprocessConfig(), InferConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = bench_data(args.data, args.studies, args.seed, Path(tmp) / "data")
        work = Paths.resolve(data_dir, args.work_dir)
        series = competition.series_table(work, "train")
        series = series[series["study_id"].isin(sorted(series["study_id"].unique())[: args.studies])]
        paths = work
        if args.build_models or not list(work.models_dir.glob("*-f0-*.pt")):
            paths = Paths(data_dir, Path(tmp) / "work")
            write_bench_models(paths, work, series, args.profile)
        print(f"data: {data_dir}; models: {_describe_models(paths)}; torch threads: {torch.get_num_threads()}")
        print(_describe_series(paths, series))
        timings = [time_inference(paths, series, torch.device("cpu"), pre_cfg, infer_cfg)]
        if torch.cuda.is_available():
            ensemble_paths = Paths(data_dir, Path(tmp) / "ensemble")
            write_bench_models(ensemble_paths, work, series, args.gpu_profile, args.gpu_folds)
            print(f"on {torch.cuda.get_device_name()}: {_describe_models(ensemble_paths)} x {args.gpu_folds} folds")
            timings += gpu_timings(ensemble_paths, series, torch.device("cuda"), pre_cfg, infer_cfg)
    per_study = samples_per_study(series, timings[0])
    projections = [project(timings[0], per_study, gpu) for gpu in KAGGLE_SETUPS]
    print(format_timings(timings))
    print(format_projection(projections, list(KAGGLE_SETUPS), per_study))
    return timings, projections


def _describe_models(paths: Paths) -> str:
    checkpoints = sorted(paths.models_dir.glob("*-f0-*.pt"))
    backbones = sorted({json.loads(p.with_suffix(".json").read_text())["config"]["backbone"] for p in checkpoints})
    return f"{paths.models_dir} ({', '.join(p.stem for p in checkpoints)}; {', '.join(backbones)})"


def _describe_series(paths: Paths, series: pd.DataFrame) -> str:
    """The size of the timed series, from the headers of their first files: what the per-study numbers scale with."""
    files = [sorted(paths.series_dir(r.split, r.study_id, r.series_id).glob("*.dcm")) for r in series.itertuples()]
    headers = [read_header(f[0]) for f in files]
    sides = [(h.Rows * h.Columns) ** 0.5 for h in headers]
    return (
        f"{series['study_id'].nunique()} studies, {len(series)} sagittal series, "
        f"{np.mean([len(f) for f in files]):.1f} slices of ~{np.mean(sides):.0f}^2 px on average"
    )


if __name__ == "__main__":
    infer_main()
