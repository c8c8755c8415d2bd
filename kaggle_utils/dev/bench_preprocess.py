"""Benchmark: our preprocessing against the plain way of the solution.

Stage 1 plain: each slice resized with PIL Lanczos (float mode). Stage 2 plain: per level, the whole
``(H, W, N)`` stack rotated with cv2 Lanczos in chunks of at most 4 channels, cropped, resized so its longest
side is ``img_size`` and padded centred. Both sides window with the series' 1st/99th percentiles, the plain
one with ``np.percentile`` of all pixels, each stage on its own (as the solution's separate stage runs).
Both run on the same series, already decoded, in one process with one cv2 thread (the solution spread
studies over processes, so single-thread speed is what counts), in turns, ``--repeat`` times, keeping each
side's fastest run (other work on the machine slows single runs by up to 2x). Agreement is the mean absolute
difference of the uint8 outputs. A second table times the same series resized to 512 px (``--resample``),
the matrix size of many real sagittal series; the synthetic ones are ~300 px.

Run: ``python -m kaggle_utils.dev.bench_preprocess [--studies 8] [--data DIR] [--repeat 3] [--resample 512]`` or
``make bench-preprocess``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kaggle_utils.core.config import PreprocessConfig
from kaggle_utils.core.paths import DEFAULT_DATA_DIR, Paths
from kaggle_utils.core.views import view_named
from kaggle_utils.dev.synthetic import make_dataset
from kaggle_utils.io import competition, tables
from kaggle_utils.io.dicom import Series, read_series
from kaggle_utils.preprocessing.sagittal import level_boxes, stage1_volume, stage2_crops

DEFAULT_DATA = DEFAULT_DATA_DIR


# --- the plain implementations -------------------------------------------------------------------
# They carry their own windowing (numpy percentiles of all pixels, numpy scaling), so that speeding up ours never
# speeds up the baseline it is compared with.
def plain_window(series: Series, cfg: PreprocessConfig) -> tuple[float, float]:
    """The series window the solution's way: ``np.percentile`` over all native pixels of all slices."""
    values = np.concatenate([np.asarray(s, np.float32).ravel() for s in series.slices])
    low, high = np.percentile(values, cfg.percentiles)
    return float(low), float(high)


def plain_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the window and scale to 0..255 in numpy, rounded like ours so that only resampling differs."""
    low, high = window
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    scaled = (np.asarray(image, np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def plain_stage1(series: Series, cfg: PreprocessConfig) -> np.ndarray:
    """Every slice resized by PIL Lanczos in float mode, then the series window."""
    size = cfg.img_size
    resized = [
        np.asarray(Image.fromarray(np.asarray(s, np.float32), mode="F").resize((size, size), Image.LANCZOS))
        for s in series.slices
    ]
    return plain_uint8(np.stack(resized, axis=-1), plain_window(series, cfg))


def _per_chunk(stack: np.ndarray, op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a cv2 op to a (H, W, N) stack at most 4 channels at a time (cv2's Lanczos limit)."""
    parts = [op(np.ascontiguousarray(stack[:, :, i : i + 4])) for i in range(0, stack.shape[2], 4)]
    return np.concatenate([p.reshape(p.shape[0], p.shape[1], -1) for p in parts], axis=-1)


def plain_level_crop(stack: np.ndarray, points: np.ndarray, view: str, level: int, cfg: PreprocessConfig):
    """One level's crops of a whole (H, W, N) stack: rotate it all, crop, longest-side resize, pad."""
    height, width = stack.shape[:2]
    box = level_boxes(points, view, width, height, cfg)[level]
    size = cfg.img_size
    out = np.zeros((size, size, stack.shape[2]), np.float32)
    if box.empty:
        return out
    if view_named(view).crop == "along_disc":
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), box.angle, 1.0)
        stack = _per_chunk(
            stack,
            lambda c: cv2.warpAffine(
                c, matrix, (width, height), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT_101
            ),
        )
    crop = stack[box.top : box.bottom, box.left : box.right]
    scale = size / max(crop.shape[:2])
    new_w, new_h = round(crop.shape[1] * scale), round(crop.shape[0] * scale)
    crop = _per_chunk(crop, lambda c: cv2.resize(c, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = crop
    return out


def plain_stage2(series: Series, points: np.ndarray, view: str, cfg: PreprocessConfig) -> np.ndarray:
    """``(size, size, 5, N)`` uint8 the solution's way (needs slices of one size)."""
    stack = series.volume().transpose(1, 2, 0)
    crops = np.stack([plain_level_crop(stack, points, view, lv, cfg) for lv in range(len(points))], axis=2)
    out = plain_uint8(crops, plain_window(series, cfg))
    out[crops == 0] = 0  # pad pixels clip to black in the solution too
    return out


# --- the benchmark -------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the result table."""

    stage: str
    ours_per_s: float
    plain_per_s: float
    mad: float

    @property
    def speedup(self) -> float:
        return self.ours_per_s / self.plain_per_s


def _timed(fn: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cache_layout(plain: np.ndarray) -> np.ndarray:
    """A plain-side array, slices last as the solution kept them ((H, W, N) or (H, W, 5, N)), in the cache's layout
    ((N, H, W) or (5, N, H, W)); outside the timings, since the layout is not what the rows compare."""
    return plain.transpose(2, 0, 1) if plain.ndim == 3 else plain.transpose(2, 3, 0, 1)


def _mad(ours: list[np.ndarray], plain: list[np.ndarray]) -> float:
    pairs = zip(ours, map(cache_layout, plain), strict=True)
    diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)).ravel() for x, y in pairs]
    return float(np.concatenate(diffs).mean())


def load_cases(data_dir: Path, n_studies: int) -> list[tuple[Series, np.ndarray, str]]:
    """The sagittal series of the first ``n_studies`` training studies that have keypoints, decoded."""
    paths = Paths(data_dir, Path(tempfile.gettempdir()))
    series = competition.series_table(paths, "train")
    series = series[series["study_id"].isin(sorted(series["study_id"].unique())[:n_studies])]
    points = tables.points_by_series(tables.keypoints_table(paths, series))
    return [
        (read_series(paths.series_dir("train", r.study_id, r.series_id)), points[r.series_id], r.view)
        for r in series.itertuples()
        if r.series_id in points
    ]


Case = tuple[Series, np.ndarray, str]
"""A decoded series, its (5, 2, 2) relative keypoints and its view."""


def _row(
    name: str,
    cases: list[Case],
    ours: Callable[[Case], np.ndarray],
    plain: Callable[[Case], np.ndarray],
    repeat: int,
) -> Row:
    """Both sides on the same cases, ``repeat`` times in turns, each side's fastest run kept: the turns expose both
    to the same background load, and the fastest run is the one it disturbed least."""
    t_ours = t_plain = float("inf")
    for _ in range(repeat):
        ours_out, seconds = _timed(lambda: [ours(c) for c in cases])
        t_ours = min(t_ours, seconds)
        plain_out, seconds = _timed(lambda: [plain(c) for c in cases])
        t_plain = min(t_plain, seconds)
    return Row(name, len(cases) / t_ours, len(cases) / t_plain, _mad(ours_out, plain_out))


def compare(cases: list[Case], cfg: PreprocessConfig, repeat: int = 1) -> list[Row]:
    """Time both implementations of both stages on the same decoded series and compare their outputs; stage 2
    also per view, since only T2 crops are rotated. Each stage computes its own window on both sides, as the
    solution's separate stage runs did."""
    rows = [_row("stage 1", cases, lambda c: stage1_volume(c[0], cfg), lambda c: plain_stage1(c[0], cfg), repeat)]
    for view in sorted({view for _, _, view in cases}):
        rows.append(
            _row(
                f"stage 2 {view}",
                [c for c in cases if c[2] == view],
                lambda c: stage2_crops(*c, cfg),
                lambda c: plain_stage2(*c, cfg),
                repeat,
            )
        )
    return rows


def resampled(cases: list[Case], size: int) -> list[Case]:
    """The same series with every slice resized to ``size`` x ``size`` (cubic): the cost at the matrix size of
    many real sagittal series (512 px and more) while the synthetic ones are ~300 px. Keypoints are relative,
    so they stay valid."""
    out = []
    for series, points, view in cases:
        slices = [cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in series.slices]
        out.append((dataclasses.replace(series, slices=slices), points, view))
    return out


def format_table(rows: list[Row], n_series: int, n_slices: int, note: str = "") -> str:
    lines = [
        f"{n_series} series, {n_slices} slices{note}; series/s, one process, one cv2 thread",
        f"{'stage':<11} {'ours':>9} {'plain':>9} {'speed-up':>9} {'MAD (uint8)':>12}",
    ]
    lines += [f"{r.stage:<11} {r.ours_per_s:9.2f} {r.plain_per_s:9.2f} {r.speedup:8.2f}x {r.mad:12.3f}" for r in rows]
    return "\n".join(lines)


def bench_data(data: Path | None, n_studies: int, seed: int, tmp: Path) -> Path:
    """The given folder, else data/synthetic when it exists, else ``n_studies`` studies generated into ``tmp``."""
    data_dir = data or (DEFAULT_DATA if (DEFAULT_DATA / "train.csv").exists() else None)
    if data_dir is None:
        print(f"generating {n_studies} synthetic studies in {tmp}")
        data_dir = make_dataset(tmp, n_train=n_studies, n_test=0, seed=seed, progress=False)
    return data_dir


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description="Preprocessing benchmark: ours against the plain way.")
    parser.add_argument("--studies", type=int, default=8, help="number of training studies")
    parser.add_argument("--data", type=Path, default=None, help="competition-layout folder (default: data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data when none is given")
    parser.add_argument("--repeat", type=int, default=3, help="time each side this many times, keep the fastest")
    parser.add_argument(
        "--resample", type=int, default=512, help="also time the series resized to this many px (0: do not)"
    )
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = bench_data(args.data, args.studies, args.seed, Path(tmp))
        start = time.perf_counter()
        cases = load_cases(data_dir, args.studies)
        read_s = time.perf_counter() - start
    n_series, n_slices = len(cases), sum(s.n_slices for s, _, _ in cases)
    print(f"data: {data_dir}; DICOM reading: {n_series / read_s:.2f} series/s (tables included)")
    rows = compare(cases, cfg, args.repeat)
    sides = np.mean([np.sqrt(np.prod(shape)) for s, _, _ in cases for shape in s.shapes])
    print(format_table(rows, n_series, n_slices, f" of ~{sides:.0f}^2 px, fastest of {args.repeat} runs"))
    if args.resample:
        big = compare(resampled(cases, args.resample), cfg, args.repeat)
        print(format_table(big, n_series, n_slices, f" resized to {args.resample}^2 px, fastest of {args.repeat} runs"))
        rows += [dataclasses.replace(r, stage=f"{r.stage} @{args.resample}") for r in big]
    return rows


if __name__ == "__main__":
    main()
