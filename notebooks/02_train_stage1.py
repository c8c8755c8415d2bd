# %% [markdown]
# # 02 · Train stage 1: keypoint localisers
# One localiser per sagittal view finds two points per disc level (T1: the two foramina; T2: the front and
# back of the disc) from the middle 8 slices, trained per fold. By default it is spatial (`keypoint_heatmap`):
# the backbone's feature maps, pooled over the slices by attention at every location, give one heatmap per point,
# read by soft-argmax and trained on the coordinates (L1) and the heatmaps; `model="keypoint"` is the solution's
# head (one pooled vector, 20 sigmoids), kept for comparison. The axial localiser (`stage1_axial`, same head and
# loop) finds the left and right subarticular points of a level on its assigned Axial T2 slice and the two
# neighbours.
#
# **Inputs**: `WORK_DIR/tables/{series,keypoints,axial_keypoints}.csv`, `WORK_DIR/stage1/` and `WORK_DIR/axial_stacks/`
# from 01.
#
# **Outputs**: `WORK_DIR/models/stage1_{t1,t2,axial}-f{fold}-s{seed}.pt` with `.json` sidecars and `.log.csv`
# curves, `WORK_DIR/oof/stage1_*.csv` out-of-fold keypoints (the axial one per series and level).

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
PROFILE = "auto"  # "full" (the solution's recipe), "demo" (CPU minutes), "smoke" (seconds); auto = full on a GPU
VIEWS = ["t1", "t2", "axial"]
FOLDS = [0, 1, 2, 3]
TRAIN_OVERRIDES = {}  # TrainConfig fields for every preset, e.g. {"epochs": 2, "weights_file": "/path/b5.safetensors"}

# %%
from kaggle_utils.core import config, parameters, presets
from kaggle_utils.core.paths import Paths
from kaggle_utils.training import train

p = parameters.notebook_params(
    DATA_DIR=DATA_DIR, WORK_DIR=WORK_DIR, PROFILE=PROFILE, VIEWS=VIEWS, FOLDS=FOLDS, TRAIN_OVERRIDES=TRAIN_OVERRIDES
)
paths = Paths.resolve(p.DATA_DIR, p.WORK_DIR)
profile = presets.resolve_profile(p.PROFILE)
configs = [presets.preset(f"stage1_{view}", profile, p.TRAIN_OVERRIDES) for view in p.VIEWS]
print(f"profile {profile}: {[(c.name, c.backbone, c.img_size, c.epochs) for c in configs]}")

# %% [markdown]
# ## What the localiser sees
# A training sample of each view as validation shows it, then five draws of the training augmentation
# (brightness/contrast, shift-scale-rotate, blur or noise, optical or grid distortion, at the profile's rates).
# In every view the keypoints must still mark the disc levels.

# %%
from kaggle_utils.evaluation import viz

for cfg in configs:
    viz.save_figure(train.augmentation_preview(paths, cfg), paths.figures_dir / f"augment_{cfg.name}.png")

# %% [markdown]
# ## Train every view on every fold
# Validation reports the mean distance of a predicted point to its target and the share within 5 px, both on
# the 256 x 256 stage-1 grid (the solution reports about 99 % within 5 px on the real data).

# %%
results = train.train_presets(paths, configs, p.FOLDS)

# %% [markdown]
# ## Training curves of the last model (every checkpoint has its `*.curves.png` beside it)

# %%
from IPython.display import Image

Image(filename=str(results[-1].checkpoint.with_suffix(".curves.png")))
