"""Preprocessing benchmark: our stage-1 and stage-2 code against the straightforward way of the solution.

Stage 1 plain: each slice resized with PIL Lanczos (float mode). Stage 2 plain: per level, the whole
``(H, W, N)`` stack rotated with cv2 Lanczos in chunks of at most 4 channels, cropped, resized so its longest
side is ``img_size`` and padded centred. Both run on the same series, already decoded, in one process with
one cv2 thread (the solution spread studies over processes, so single-thread speed is what counts). Agreement
is the mean absolute difference of the uint8 outputs.

Run: ``python -m kaggle_utils.bench [--studies 8] [--data DIR]`` or ``make bench-preprocess``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kaggle_utils import tables
from kaggle_utils.config import PreprocessConfig
from kaggle_utils.dicom import Series, read_series
from kaggle_utils.paths import Paths
from kaggle_utils.preprocess import (
    T2_PLANE,
    intensity_window,
    level_boxes,
    stage1_volume,
    stage2_crops,
    to_uint8,
)
from kaggle_utils.synthetic import make_dataset

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "synthetic"


# --- the plain implementations -------------------------------------------------------------------
def plain_stage1(series: Series, cfg: PreprocessConfig) -> np.ndarray:
    """Every slice resized by PIL Lanczos in float mode, then the series window."""
    size = cfg.img_size
    resized = [
        np.asarray(Image.fromarray(np.asarray(s, np.float32), mode="F").resize((size, size), Image.LANCZOS))
        for s in series.slices
    ]
    return to_uint8(np.stack(resized, axis=-1), intensity_window(series.slices, cfg.percentiles))


def _per_chunk(stack: np.ndarray, op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a cv2 op to a (H, W, N) stack at most 4 channels at a time (cv2's Lanczos limit)."""
    parts = [op(np.ascontiguousarray(stack[:, :, i : i + 4])) for i in range(0, stack.shape[2], 4)]
    return np.concatenate([p.reshape(p.shape[0], p.shape[1], -1) for p in parts], axis=-1)


def plain_level_crop(stack: np.ndarray, points: np.ndarray, plane: str, level: int, cfg: PreprocessConfig):
    """One level's crops of a whole (H, W, N) stack: rotate it all, crop, longest-side resize, pad."""
    height, width = stack.shape[:2]
    box = level_boxes(points, plane, width, height, cfg)[level]
    size = cfg.img_size
    out = np.zeros((size, size, stack.shape[2]), np.float32)
    if box.empty:
        return out
    if plane == T2_PLANE:
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


def plain_stage2(series: Series, points: np.ndarray, plane: str, cfg: PreprocessConfig) -> np.ndarray:
    """``(size, size, 5, N)`` uint8 the solution's way (needs slices of one size)."""
    stack = series.volume().transpose(1, 2, 0)
    crops = np.stack([plain_level_crop(stack, points, plane, lv, cfg) for lv in range(len(points))], axis=2)
    out = to_uint8(crops, intensity_window(series.slices, cfg.percentiles))
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


def _mad(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)).ravel() for x, y in zip(a, b, strict=True)]
    return float(np.concatenate(diffs).mean())


def load_cases(data_dir: Path, n_studies: int) -> list[tuple[Series, np.ndarray, str]]:
    """The sagittal series of the first ``n_studies`` training studies that have keypoints, decoded."""
    paths = Paths(data_dir, Path(tempfile.gettempdir()))
    series = tables.series_table(paths, "train")
    series = series[series["study_id"].isin(sorted(series["study_id"].unique())[:n_studies])]
    points = tables.points_by_series(tables.keypoints_table(paths, series))
    return [
        (read_series(paths.series_dir("train", r.study_id, r.series_id)), points[r.series_id], r.plane)
        for r in series.itertuples()
        if r.series_id in points
    ]


def _stage2_row(name: str, cases: list[tuple[Series, np.ndarray, str]], cfg: PreprocessConfig) -> Row:
    ours, t_ours = _timed(lambda: [stage2_crops(s, p, plane, cfg) for s, p, plane in cases])
    plain, t_plain = _timed(lambda: [plain_stage2(s, p, plane, cfg) for s, p, plane in cases])
    return Row(name, len(cases) / t_ours, len(cases) / t_plain, _mad(ours, plain))


def compare(cases: list[tuple[Series, np.ndarray, str]], cfg: PreprocessConfig) -> list[Row]:
    """Time both implementations of both stages on the same decoded series and compare their outputs; stage 2
    also per plane, since only T2 crops are rotated."""
    ours1, t_ours1 = _timed(lambda: [stage1_volume(s, cfg) for s, _, _ in cases])
    plain1, t_plain1 = _timed(lambda: [plain_stage1(s, cfg) for s, _, _ in cases])
    rows = [Row("stage 1", len(cases) / t_ours1, len(cases) / t_plain1, _mad(ours1, plain1))]
    for plane in sorted({plane for _, _, plane in cases}):
        rows.append(_stage2_row(f"stage 2 {plane}", [c for c in cases if c[2] == plane], cfg))
    return rows


def format_table(rows: list[Row], n_series: int, n_slices: int) -> str:
    lines = [
        f"{n_series} series, {n_slices} slices; series/s, one process, one cv2 thread",
        f"{'stage':<11} {'ours':>9} {'plain':>9} {'speed-up':>9} {'MAD (uint8)':>12}",
    ]
    lines += [f"{r.stage:<11} {r.ours_per_s:9.2f} {r.plain_per_s:9.2f} {r.speedup:8.2f}x {r.mad:12.3f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8, help="number of training studies")
    parser.add_argument("--data", type=Path, default=None, help="competition-layout folder (default: data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data when none is given")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or (DEFAULT_DATA if (DEFAULT_DATA / "train.csv").exists() else None)
        if data_dir is None:
            print(f"generating {args.studies} synthetic studies in {tmp}")
            data_dir = make_dataset(Path(tmp), n_train=args.studies, n_test=0, seed=args.seed, progress=False)
        start = time.perf_counter()
        cases = load_cases(data_dir, args.studies)
        read_s = time.perf_counter() - start
    rows = compare(cases, cfg)
    n_slices = sum(s.n_slices for s, _, _ in cases)
    print(f"data: {data_dir}; DICOM reading: {len(cases) / read_s:.2f} series/s (tables included)")
    print(format_table(rows, len(cases), n_slices))
    return rows


if __name__ == "__main__":
    main()
