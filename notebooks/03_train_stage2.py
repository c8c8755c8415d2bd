# %% [markdown]
# # 03 · Train stage 2: per-level severity classifiers
# Each preset classifies the crop sequence of every disc level: `fs` (Sagittal T1, 24 frames, 96 px) the two
# foramina, each from its own side's half of the slices (`fo`, the solution's, reads both from all of them; train it
# by name); `sp1` (8 frames, 128 px), `sp2` (5 frames, 256 px) and `su` (24 frames, 96 px) on Sagittal T2/STIR
# all five conditions; `ax` (Axial T2, 5 slices, 128 px) the spinal canal from the canal crop and each side's
# subarticular recess from its own crop (the right one mirrored, one head for both). Training crops are cut around
# the true keypoints, inference crops around stage-1 predictions. `stage1_error_p` (say 0.5) trains that share of the
# sagittal samples on crops around the true keypoints moved by an out-of-fold error field of 02 (a series' own OOF
# prediction first), cut once and cached in `WORK_DIR/stage2_error/`: the 1st-place recipe, which pays when the
# localiser is imprecise (see the README).
#
# **Inputs**: `WORK_DIR/tables/{series,targets,keypoints,axial_keypoints}.csv`, `WORK_DIR/stage2/` and
# `WORK_DIR/axial_crops/` from 01, `WORK_DIR/oof/stage1_*` from 02.
#
# **Outputs**: `WORK_DIR/models/{preset}-f{fold}-s{seed}.pt` with sidecars and curves, `WORK_DIR/oof/{preset}-*.csv`.

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
DATA_DIR = ""  # competition-layout folder ("" = auto, see 01)
WORK_DIR = ""  # output folder ("" = auto)
PROFILE = "auto"  # "full", "demo", "smoke"; auto = full on a GPU, demo on a CPU
PRESETS = []  # stage-2 presets; [] = all of them (presets.STAGE2_PRESETS: fs, sp1, sp2, su, ax; fo by name)
FOLDS = [0, 1, 2, 3]
TRAIN_OVERRIDES = {}  # TrainConfig fields for every preset, e.g. {"epochs": 2}

# %%
from kaggle_utils.core import config, parameters, presets
from kaggle_utils.core.paths import Paths
from kaggle_utils.training import train

p = parameters.notebook_params(
    DATA_DIR=DATA_DIR, WORK_DIR=WORK_DIR, PROFILE=PROFILE, PRESETS=PRESETS, FOLDS=FOLDS, TRAIN_OVERRIDES=TRAIN_OVERRIDES
)
paths = Paths.resolve(p.DATA_DIR, p.WORK_DIR)
profile = presets.resolve_profile(p.PROFILE)
configs = [presets.preset(name, profile, p.TRAIN_OVERRIDES) for name in presets.presets_or_default(p.PRESETS)]
print(f"profile {profile}: {[(c.name, c.backbone, c.n_frames, c.img_size, c.epochs) for c in configs]}")

# %% [markdown]
# ## What the classifiers see
# A training study of each preset, one row per view: as validation shows it, then five draws of the training
# augmentation. The five level crops (and all frames) of a view share one draw; the T2 presets also flip vertically.
# An axial sample is one level: its canal crop and its two recess crops, flipped left to right with their labels.

# %%
from kaggle_utils.evaluation import viz
from kaggle_utils.io.tables import load_table

for cfg in configs:
    viz.save_figure(train.augmentation_preview(paths, cfg), paths.figures_dir / f"augment_{cfg.name}.png")

# %% [markdown]
# ## The foramina a T1 model reads
# A Normal/Mild and a Severe foramen of each side, the level's crop on every frame the T1 presets read, left to
# right: the narrowing shows on its side's lateral frames only, which is why `fs` reads each side from its own half.

# %%
t1 = next((cfg for cfg in configs if cfg.view == "t1"), None)
examples = [] if t1 is None else viz.foramen_examples(paths, load_table(paths, "series"), load_table(paths, "targets"))
if examples:
    picture = viz.save_figure(
        viz.foramina_figure(paths, examples, t1.n_frames, t1.img_size), paths.figures_dir / "foramina.png"
    )
    print(f"{picture}: {len(examples)} foramina")

# %% [markdown]
# ## Train every preset on every fold
# The validation score is the competition metric restricted to the condition families the preset predicts,
# with the plain view (no TTA) and ground-truth crops.

# %%
results = train.train_presets(paths, configs, p.FOLDS)

# %% [markdown]
# ## Training curves of the last model (every checkpoint has its `*.curves.png` beside it)

# %%
from IPython.display import Image

Image(filename=str(results[-1].checkpoint.with_suffix(".curves.png")))
