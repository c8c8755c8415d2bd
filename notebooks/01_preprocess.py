# %% [markdown]
# # 01 · Preprocess
# Builds the hand-off tables and the cached arrays both training stages read.
#
# **Inputs**: `DATA_DIR`, a folder in the competition layout (`train.csv`, `train_series_descriptions.csv`,
# `train_label_coordinates.csv`, `train_images/`), optionally the solution's metadata files, found in `DATA_DIR`
# or any attached Kaggle dataset: the corrected keypoints `coords_v7.csv` or `coords_rsna_improved.csv`, and
# `metadata.csv`, whose folds `{"folds_file": "metadata.csv"}` uses so fold-by-fold numbers compare with the solution's.
#
# **Outputs** in `WORK_DIR`: `tables/{series,targets,folds,keypoints}.csv`, `tables/axial_levels.csv` (each Axial T2
# slice's level) and `tables/axial_keypoints.csv` (the axial localiser's samples), `stage1/{study}/{series}.npy`
# (N, 256, 256), `stage2/{study}/{series}.npy` (5, N, 256, 256),
# `axial_stacks/{study}/{series}_{level}_{instance}.npy` (5, 256, 256) and `axial_crops/...` (3, 5, 256, 256: centre,
# left, mirrored right crop) uint8, and `figures/study_*.png`, `figures/axial_levels_*.png`.

# %%
# Bootstrap: import kaggle_utils from this repository or, on Kaggle, from the code dataset under /kaggle/input
# (KAGGLE_INPUT_DIR moves it); then, when the wheels dataset is attached, install offline what the image lacks.
# The same text in every notebook (tests/test_notebooks.py keeps it so).
import os
import sys
from pathlib import Path


def package_root() -> Path | None:
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "kaggle_utils" / "__init__.py").exists():
            return folder
    kaggle_input = Path(os.environ.get("KAGGLE_INPUT_DIR") or "/kaggle/input")
    for depth in range(4):  # Kaggle has mounted datasets at /kaggle/input/<slug> and deeper
        for init in sorted(kaggle_input.glob("*/" * depth + "kaggle_utils/__init__.py")):
            return init.parent.parent
    return None


root = package_root()
if root is not None:  # the copy found here wins over an installed one, so a kernel runs the code it was given
    sys.path.insert(0, str(root))
try:
    import kaggle_utils
except ImportError as error:
    raise ImportError("kaggle_utils not found: `make install` here, or add the code dataset on Kaggle") from error
WRITTEN_FOR = "0.2"  # the kaggle_utils release these notebooks call (its major.minor)
found = getattr(kaggle_utils, "__version__", "0.1 or older")
print(f"kaggle_utils {found} from {Path(kaggle_utils.__file__).parent}")
if not found.startswith(WRITTEN_FOR + "."):  # an older code dataset has other modules: say so, not a failed import
    raise ImportError(
        f"this notebook calls kaggle_utils {WRITTEN_FOR}, but {Path(kaggle_utils.__file__).parent} holds {found}: "
        "publish the code that matches it (`make sync-code`) and attach that version of the code dataset"
    )
from kaggle_utils.core.paths import wheels_dataset

wheels = wheels_dataset()
if wheels is not None:  # internet is off in a submission: only what the image lacks, from the attached wheels
    from kaggle_utils.core.wheels import install_offline

    print(f"installed offline: {install_offline(wheels) or 'nothing (the image has it all)'}")

# %% tags=["parameters"]
DATA_DIR = ""  # competition-layout folder; "" = $DATA_DIR, the Kaggle input, or the synthetic demo data
WORK_DIR = ""  # output folder; "" = $WORK_DIR, /kaggle/working, or ./work
WORKERS = 2  # processes for DICOM decoding
PREPROCESS_OVERRIDES = {}  # PreprocessConfig fields, e.g. {"t2_height_mult": 1.2, "folds_file": "metadata.csv"}

# %%
from kaggle_utils.core import config, parameters
from kaggle_utils.core.paths import Paths
from kaggle_utils.evaluation import viz
from kaggle_utils.io import tables
from kaggle_utils.preprocessing import axial_crops, cache

p = parameters.notebook_params(
    DATA_DIR=DATA_DIR, WORK_DIR=WORK_DIR, WORKERS=WORKERS, PREPROCESS_OVERRIDES=PREPROCESS_OVERRIDES
)
paths = Paths.resolve(p.DATA_DIR, p.WORK_DIR)
cfg = config.apply_overrides(config.PreprocessConfig(num_workers=p.WORKERS), p.PREPROCESS_OVERRIDES)
print(f"data: {paths.data_dir}\nwork: {paths.work_dir}")

# %% [markdown]
# ## Tables: series, targets, folds, keypoints

# %%
built = tables.build_training_tables(paths, cfg)
series, keypoints = built["series"], built["keypoints"]
print(
    f"{series['study_id'].nunique()} studies, {len(series)} sagittal series, "
    f"{keypoints['series_id'].nunique()} with keypoints"
)
series.groupby(["fold", "view"]).size().unstack()

# %% [markdown]
# ## Axial T2: the slice of each level
# Each level's Sagittal T2 point behind the disc (ground truth here), in patient coordinates, against every axial
# slice plane: the nearest slice of each series within `axial_max_distance_mm` images that level. Levels no axial
# series reaches keep their sagittal prediction. The axial localiser's samples are the assigned slices whose series
# carries both subarticular points of the level, cached with two neighbours above and below from the same block,
# and their crops from the true points: the canal between the two points and each lateral recess, the right one
# mirrored.

# %%
prepared = axial_crops.prepare_training(paths, series, keypoints, cfg)
axial_levels = prepared.levels
n_samples = len(prepared.keypoints.groupby(["series_id", "level"]))
print(f"{prepared.coverage}\n{n_samples} axial localiser samples, {len(prepared.problems)} series failed")
print(prepared.checks)
axial_levels[axial_levels["assigned"]].groupby("level").size().rename("series with the level").to_frame().transpose()

# %%
covered = axial_levels.loc[axial_levels["assigned"], "study_id"]
if len(covered):
    axial_study = int(covered.value_counts().index[0])  # the study with the most assigned slices
    picture = viz.level_picture(paths, "train", axial_study, series, keypoints, cfg.axial_max_distance_mm)
    viz.save_figure(viz.axial_levels_figure(picture), paths.figures_dir / f"axial_levels_{axial_study}.png")

# %% [markdown]
# ## Arrays: stage-1 volumes and stage-2 crops (ground-truth keypoints), cached

# %%
jobs = cache.plan_jobs(paths, series, tables.points_by_series(keypoints), cfg)
problems = cache.run_jobs(jobs, cfg)
print(f"{len(jobs)} series processed ({len(series) - len(jobs)} already cached), {len(problems)} failed")
for line in problems:  # training leaves these series out; the rest carries on
    print(f"  {line}")

# %% [markdown]
# ## One study: middle slices with the ten keypoints, and the five level crops

# %%
cached = [paths.stage1_array(r.study_id, r.series_id).exists() for r in series.itertuples()]
study_id = int(series.loc[cached, "study_id"].iloc[0])  # the first study whose arrays were made
figure = viz.draw_study(paths, series, keypoints, study_id)
viz.save_figure(figure, paths.figures_dir / f"study_{study_id}.png")
