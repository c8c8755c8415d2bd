"""Stage-2 training crops that carry stage 1's error.

At inference the crops are cut around predicted keypoints; crops cut around the true ones teach a classifier a
centring it will never see. So stage 2 also trains on crops cut around keypoints that are off as stage 1 is off:
for each training series, ``draws`` crop sets, each from its true keypoints plus one out-of-fold error field (the
10 points' errors of one held-out series, kept together so the levels stay consistent), the series' own
out-of-fold prediction first where it has one. The error fields come from the stage-1 OOF files of notebook 02.

The crops are cached like the ground-truth ones (``cache``): ``WORK_DIR/stage2_error/{draw}/``, cut with the same
preprocessing parameters and stamped with a key of those, of the error fields and of the draws, so they are made
once, deterministically, and remade when stage 1 or the parameters change.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from kaggle_utils.core import distributed
from kaggle_utils.core.config import PreprocessConfig, TrainConfig
from kaggle_utils.core.paths import STAGE2, Paths
from kaggle_utils.io.tables import load_table, points_by_series
from kaggle_utils.preprocessing import cache

ROOT = "stage2_error"
"""Folder of the crops with stage-1 error under ``WORK_DIR``; draw k is ``stage2_error/{k}``."""


def draw_roots(draws: int) -> tuple[str, ...]:
    """The ``Paths.stage2_array`` roots of the draws."""
    return tuple(f"{ROOT}/{k}" for k in range(draws))


def oof_points(paths: Paths, view: str) -> dict[int, np.ndarray]:
    """Series id -> (5, 2, 2) relative keypoints predicted out of fold by the view's localisers (``stage1_{view}``
    OOF files of this run, else of the main run); empty when stage 1 has not been validated."""
    for folder in dict.fromkeys((paths.oof_dir, paths.with_run("").oof_dir)):
        files = sorted(folder.glob(f"stage1_{view}-f*-s*.csv"))
        if files:
            oof = pd.concat([pd.read_csv(f) for f in files]).groupby(["series_id", "point"]).mean().reset_index()
            return {
                int(s): g.sort_values("point")[["relative_x", "relative_y"]].to_numpy().reshape(5, 2, 2)
                for s, g in oof.groupby("series_id")
            }
    return {}


def error_fields(predicted: dict[int, np.ndarray], truth: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Series id -> (5, 2, 2) relative error (predicted - true) of the series that have both."""
    return {s: predicted[s] - truth[s] for s in sorted(predicted) if s in truth}


def drawn_points(
    truth: dict[int, np.ndarray], errors: dict[int, np.ndarray], draws: int, seed: int
) -> dict[int, list[np.ndarray]]:
    """Series id -> ``draws`` keypoint sets (5, 2, 2) with stage-1 error: its own OOF error first where it has one,
    then error fields of random held-out series (never its own twice), clipped to the image. Deterministic: each
    series draws from its own generator, seeded by ``seed`` and its id."""
    pool = np.stack(list(errors.values())) if errors else np.zeros((1, 5, 2, 2))
    drawn = {}
    for series_id, points in truth.items():
        rng = np.random.default_rng([seed, series_id])
        own = [errors[series_id]] if series_id in errors else []
        picks = rng.choice(len(pool), size=max(draws - len(own), 0), replace=len(pool) < draws)
        offsets = (own + [pool[i] for i in picks])[:draws]
        drawn[series_id] = [np.clip(points + offset, 0.0, 1.0) for offset in offsets]
    return drawn


def preprocess_config(paths: Paths) -> PreprocessConfig:
    """The parameters notebook 01 cut the ground-truth crops with (its stamp in ``WORK_DIR/stage2``)."""
    stamp = paths.cache_dir(STAGE2) / "params.json"
    if not stamp.exists():
        raise FileNotFoundError(f"{stamp} not found: run notebooks/01_preprocess first")
    params = json.loads(stamp.read_text())["params"]
    return PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def _key(cfg: PreprocessConfig, errors: dict[int, np.ndarray], draws: int, seed: int) -> str:
    digest = hashlib.sha1(cache.params_key(cfg).encode())
    for series_id, error in errors.items():
        digest.update(str(series_id).encode() + np.round(error, 6).tobytes())
    digest.update(f"{draws}-{seed}".encode())
    return digest.hexdigest()[:10]


def make_error_crops(paths: Paths, cfg: TrainConfig, draws: int) -> tuple[str, ...]:
    """Cut (or find cached) the ``draws`` crop sets with stage-1 error of every training series of ``cfg.view``;
    returns their roots, or nothing (with a message) when stage 1 has no out-of-fold predictions to measure its
    error by. Under ``torchrun`` rank 0 cuts them while the others wait."""
    predicted = oof_points(paths, cfg.view)
    if not predicted:
        print(f"{cfg.name}: no stage-1 OOF predictions for {cfg.view}; training on ground-truth crops only")
        return ()
    keypoints = load_table(paths, "keypoints")
    series = load_table(paths, "series")
    series = series[(series["view"] == cfg.view) & series["series_id"].isin(keypoints["series_id"])]
    plane_ids = set(series["series_id"])
    truth = {s: p for s, p in points_by_series(keypoints).items() if s in plane_ids}
    errors = error_fields(predicted, truth)
    roots = draw_roots(draws)
    if distributed.context().is_main:
        preprocess = preprocess_config(paths)
        stamp = paths.work_dir / ROOT / cfg.view / "params.json"
        key = _key(preprocess, errors, draws, cfg.seed)
        current = cache.stamp_matches(stamp, key)
        jobs = plan_jobs(paths, series, drawn_points(truth, errors, draws, cfg.seed), roots, current)
        if jobs:
            print(
                f"{cfg.name}: cutting {draws} crop sets with stage-1 error ({len(errors)} OOF error fields) "
                f"for {len(jobs)} series"
            )
            cache.run_jobs(jobs, preprocess, desc=f"crops with stage-1 error ({cfg.view})")
        cache.write_stamp(stamp, key, error_fields=len(errors), draws=draws)
    distributed.barrier()
    return roots


def plan_jobs(
    paths: Paths, series: pd.DataFrame, drawn: dict[int, list[np.ndarray]], roots: tuple[str, ...], current: bool
) -> list[cache.SeriesJob]:
    """One job per series whose crop sets are missing, or all of them when the stamp is not ``current``."""
    jobs = []
    for row in series.itertuples():
        outputs = [paths.stage2_array(row.study_id, row.series_id, root) for root in roots]
        if current and all(path.exists() for path in outputs):
            continue
        jobs.append(
            cache.SeriesJob(
                study_id=row.study_id,
                series_id=row.series_id,
                view=row.view,
                folder=paths.series_dir(row.split, row.study_id, row.series_id),
                stage1_out=None,
                stage2_out=None,
                points=None,
                extra_crops=tuple(zip(outputs, drawn[row.series_id], strict=True)),
            )
        )
    return jobs
