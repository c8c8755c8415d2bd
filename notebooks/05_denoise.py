# %% [markdown]
# # 05 · Denoise: noisy labels out, pseudo labels in (round 2)
# The solution's best submission trained with `0.5 * loss(labels) + 0.5 * loss(pseudo labels)`, and its code ignores
# the labels an out-of-fold ensemble contradicts (confident learning, threshold 0.85). This notebook builds both from
# round 1 (notebook 03) and trains round 2 into its own sub-folder, so round 1 stays as it was:
#
# 1. the OOF ensemble of round 1: per row, the presets routed per condition as inference routes them;
# 2. the noisy-label table: every labelled (study, condition, level) scored by `1 - p(label)`, flagged at `THRESHOLD`
#    when a class-calibrated argmax suggests another class; counts per condition;
# 3. with known flips (synthetic data made with `--label-noise`): precision and recall of the detection;
# 4. the pseudo-label table: the ensemble's probabilities as soft targets for every covered row;
# 5. round 2: every preset retrained with the noisy labels ignored and `PSEUDO_WEIGHT` of the loss on pseudo labels;
# 6. the stage-2 CV of both rounds on the same studies (against the given labels, and the true ones when known).
#
# Only studies with round-1 OOF predictions are screened and get pseudo labels: train round 1 on every fold.
#
# **Inputs**: `WORK_DIR/tables/{series,folds,targets,keypoints}.csv`, `WORK_DIR/stage2/`, `WORK_DIR/oof/{preset}-*.csv`
# and `WORK_DIR/models/` from 01-03; `DATA_DIR/label_flips.csv` when it exists.
#
# **Outputs**: `WORK_DIR/tables/{noisy_labels,pseudo_labels}.csv`; `WORK_DIR/{RUN}/models/` (round-2 classifiers plus a
# copy of the localisers), `WORK_DIR/{RUN}/oof/`, `WORK_DIR/{RUN}/denoise.json`. Notebook 04 with `RUN` set to the same
# name runs inference and CV with the round-2 models.

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
FOLDS = [0, 1, 2, 3]  # folds retrained in round 2 (round-1 OOF of every fold is read where it exists)
TRAIN_OVERRIDES = {}  # TrainConfig fields for every preset, as in 03
THRESHOLD = 0.85  # a label is noisy when the ensemble gives it at most 1 - THRESHOLD (and suggests another class)
PSEUDO_WEIGHT = 0.5  # loss = (1 - w) * loss(labels) + w * loss(pseudo labels)
RUN = "denoised"  # round 2's sub-folder of WORK_DIR

# %%
import json

import pandas as pd

from kaggle_utils.core import config, parameters, presets
from kaggle_utils.core.constants import SEVERITIES
from kaggle_utils.core.paths import LABEL_FLIPS_CSV, Paths
from kaggle_utils.evaluation import viz
from kaggle_utils.io import tables
from kaggle_utils.training import denoise, train

p = parameters.notebook_params(
    DATA_DIR=DATA_DIR,
    WORK_DIR=WORK_DIR,
    PROFILE=PROFILE,
    PRESETS=PRESETS,
    FOLDS=FOLDS,
    TRAIN_OVERRIDES=TRAIN_OVERRIDES,
    THRESHOLD=THRESHOLD,
    PSEUDO_WEIGHT=PSEUDO_WEIGHT,
    RUN=RUN,
)
paths = Paths.resolve(p.DATA_DIR, p.WORK_DIR)  # round 1
round2 = paths.with_run(p.RUN)
profile = presets.resolve_profile(p.PROFILE)
configs = [presets.preset(name, profile, p.TRAIN_OVERRIDES) for name in presets.presets_or_default(p.PRESETS)]
targets = tables.load_table(paths, "targets")
folds = tables.load_table(paths, "folds")
flips = pd.read_csv(paths.data_file(LABEL_FLIPS_CSV)) if paths.data_file(LABEL_FLIPS_CSV).exists() else None
report = {"threshold": p.THRESHOLD, "pseudo_weight": p.PSEUDO_WEIGHT}

# %% [markdown]
# ## The OOF ensemble of round 1
# Studies of a fold whose round-1 models were not trained have no OOF prediction: they are neither screened nor
# pseudo-labelled, and a round-2 fold learns from them only through their given labels.

# %%
oof = denoise.load_oof(paths, configs, sorted(folds["fold"].unique()))
ensemble = denoise.oof_ensemble(oof, configs)
coverage = denoise.fold_coverage(folds, ensemble, p.FOLDS)
print(f"round-1 OOF covers {ensemble['study_id'].nunique()} of {len(targets)} training studies")
print(coverage.to_string(index=False))

# %% [markdown]
# ## Noisy labels
# The most suspicious labels first; `label` and `suggested` as severities, `score` = 1 - p(label).

# %%
noisy = denoise.noisy_table(ensemble, targets, p.THRESHOLD)
tables.save_table(paths, "noisy_labels", noisy)
counts = denoise.counts_per_condition(noisy)
report["noisy_per_condition"] = dict(zip(counts["condition"], counts["noisy"].astype(int).tolist(), strict=True))
print(f"{int(noisy['noisy'].sum())} of {len(noisy)} scored labels are noisy at threshold {p.THRESHOLD}")
print(counts.round(3).to_string(index=False))
severity = dict(enumerate(SEVERITIES)) | {-1: ""}
noisy.head(12).assign(label=noisy["label"].map(severity), suggested=noisy["suggested"].map(severity)).round(3)

# %% [markdown]
# ## Detection against the known flips
# Only synthetic data made with `--label-noise` lists its flips (`label_flips.csv`); recall counts the flips the
# ensemble scored. The curve shows what other thresholds would flag; the picture (`figures/noisy_labels.png`) shows
# where the flipped labels' scores fall against the threshold.

# %%
if flips is None:
    print(f"no {LABEL_FLIPS_CSV} in {paths.data_dir} (real data has none): precision and recall are skipped")
else:
    detection = denoise.detection(noisy, flips)
    report["detection"] = detection
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in detection.items()})
    curve = denoise.detection_curve(noisy, flips, [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
    print(curve.round(3).to_string(index=False))
figure = viz.noisy_label_figure(
    noisy, p.THRESHOLD, set(flips["row_id"]) if flips is not None else None, curve if flips is not None else None
)
viz.save_figure(figure, paths.figures_dir / "noisy_labels.png")

# %% [markdown]
# ## Pseudo labels

# %%
pseudo = denoise.pseudo_table(ensemble)
tables.save_table(paths, "pseudo_labels", pseudo)
print(
    f"{len(pseudo)} pseudo-labelled rows for {pseudo['study_id'].nunique()} studies -> {paths.table('pseudo_labels')}"
)

# %% [markdown]
# ## Round 2: noisy labels ignored, pseudo-label loss mixed in
# Into `WORK_DIR/{RUN}`; validation (and so the CV below) keeps the given labels. A fold none of whose training studies
# has a round-1 OOF prediction would only repeat round 1, so it is skipped.

# %%
overrides = {
    **p.TRAIN_OVERRIDES,
    "noisy_labels": str(paths.table("noisy_labels")),
    "pseudo_labels": str(paths.table("pseudo_labels")),
    "pseudo_weight": p.PSEUDO_WEIGHT,
}
round2_presets = [presets.preset(cfg.name, profile, overrides) for cfg in configs]
round2_folds = coverage.loc[coverage["with_oof"] > 0, "fold"].tolist()
skipped = sorted(set(p.FOLDS) - set(round2_folds))
if skipped:
    print(f"folds {skipped} skipped: no round-1 OOF for their training studies (train round 1 on every fold)")
denoise.copy_stage1(paths, round2)
results = [r for cfg in round2_presets for r in train.train_folds(round2, cfg, round2_folds)]
if results:
    print(train.results_table(results).round(4).to_string(index=False))

# %% [markdown]
# ## CV before and after
# Stage-2 validation predictions of the folds trained in both rounds (ground-truth crops, no TTA), scored with the
# competition metric per preset and for the routed ensemble. On synthetic data with flips, "true" scores against the
# labels the images show. Round 2 used OOF predictions of models that had seen the other folds' labels, so its CV is
# slightly optimistic.

# %%
if results:
    before = denoise.load_oof(paths, configs, round2_folds)
    after = denoise.load_oof(round2, round2_presets, round2_folds)
    labels = {"given": targets} | ({"true": denoise.true_targets(targets, flips)} if flips is not None else {})
    cv = denoise.cv_compare(before, after, labels)
    report["cv"] = cv.to_dict("records")
    print(cv.round(4).to_string(index=False))
else:
    print("round 2 trained nothing: no CV to compare")
round2.run_dir.mkdir(parents=True, exist_ok=True)
round2.denoise_json.write_text(json.dumps(report, indent=1))
print(f"report: {round2.denoise_json}")
