"""The command line: ``python -m kaggle_utils.dev.synthetic OUT_DIR [--train N] [--test M] [--seed S]
[--workers W] [--missing-series-fraction F] [--label-noise F]`` writes a dataset with ``make_dataset`` and prints
the row count of every CSV file and the number of DICOM files of each split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from kaggle_utils.core.paths import LABEL_FLIPS_CSV, Paths
from kaggle_utils.dev import synthetic
from kaggle_utils.dev.synthetic.dataset import OUTPUT_FILES, SPLITS, make_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kaggle_utils.dev.synthetic", description=synthetic.__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=48, help="number of training studies")
    parser.add_argument("--test", type=int, default=8, help="number of test studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--missing-series-fraction", type=float, default=0.0)
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help=f"fraction of train.csv labels flipped (listed in {LABEL_FLIPS_CSV})",
    )
    args = parser.parse_args(argv)
    out = make_dataset(
        args.out_dir,
        args.train,
        args.test,
        args.seed,
        args.workers,
        missing_series_fraction=args.missing_series_fraction,
        label_noise=args.label_noise,
    )
    for name in (n for n in OUTPUT_FILES if (out / n).exists()):
        print(f"{out / name}: {len(pd.read_csv(out / name))} rows")
    for split in SPLITS:
        images = Paths(out, out).images_dir(split)
        print(f"{images}: {sum(1 for _ in images.rglob('*.dcm'))} DICOM files")


if __name__ == "__main__":
    main()
