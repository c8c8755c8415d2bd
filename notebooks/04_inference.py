# %% [markdown]
# # 04 · Inference: raw DICOMs to `submission.csv`, and the out-of-fold CV score
# For every sagittal series: decode the DICOMs, predict the ten keypoints (median of the localisers), crop every
# level with the training crop function, classify with every stage-2 model and all 9 TTA rotations in one batch,
# then route per condition (subarticular from `su`; spinal the mean of the T2 models; foraminal from T1 when the
# study has one, else from T2). The axial branch: the predicted Sagittal T2 keypoints place each level on the
# study's Axial T2 slices (within 5 mm), the axial localiser finds the two subarticular points on the level's
# stack, and the axial classifier grades the canal and both recesses; its spinal and subarticular rows join the
# sagittal ones in logit space, with the weight and temperature per family that the CV fits (`models/blend.json`).
# Studies or rows no model covers get the class priors of the training labels.
#
# **Inputs**: `DATA_DIR` (`test_series_descriptions.csv`, `test_images/`, `train.csv`), `WORK_DIR/models/`
# (or a weights dataset on Kaggle), and for CV the tables of 01. With `RUN` set (e.g. `denoised`, see 05) the models
# come from `WORK_DIR/{RUN}/models/` and the outputs below go to `WORK_DIR/{RUN}/` instead.
#
# **Outputs**: `WORK_DIR/submission.csv` (25 rows per test study), `WORK_DIR/cv.json`,
# `WORK_DIR/oof/oof_submission.csv`, `figures/{worst_localisation,axial_predicted}.png`, and from the CV
# `WORK_DIR/models/blend.json` (the kernel reads it beside the models).

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
RUN_CV = "auto"  # out-of-fold score on the training folds; auto = yes, except inside a Kaggle kernel
FOLDS = [0, 1, 2, 3]  # folds whose models exist, for CV
INFER_OVERRIDES = {}  # InferConfig fields, e.g. {"tta_angles": [0]}
RUN = ""  # a training round's sub-folder of WORK_DIR ("denoised" after 05); "" = WORK_DIR itself

# %%
import json
import warnings

from kaggle_utils.core import config, devices, parameters
from kaggle_utils.core.faults import FaultLog
from kaggle_utils.core.paths import TEST_LABELS_CSV, TRAIN_CSV, Paths, is_kaggle
from kaggle_utils.evaluation import crossval, viz
from kaggle_utils.inference import ensemble, run, submission
from kaggle_utils.io import competition, tables

p = parameters.notebook_params(
    DATA_DIR=DATA_DIR, WORK_DIR=WORK_DIR, RUN_CV=RUN_CV, FOLDS=FOLDS, INFER_OVERRIDES=INFER_OVERRIDES, RUN=RUN
)
paths = Paths.resolve(p.DATA_DIR, p.WORK_DIR).with_run(p.RUN)
infer_cfg = config.apply_overrides(config.InferConfig(), p.INFER_OVERRIDES)
pre_cfg = config.PreprocessConfig()
device = devices.default_device()
run_cv = (not is_kaggle()) if p.RUN_CV == "auto" else p.RUN_CV
targets = competition.targets_table(competition.drop_excluded(competition.read_csv(paths, TRAIN_CSV)))
report = {}

# %% [markdown]
# ## Cross-validation: fold f's training studies through fold f's models
# Each held-out study twice through the same models, TTA and routing: from the keypoints the localisers predict
# (the test-time path, "with axial") and from the ground-truth keypoints ("oracle"). The table per condition and
# level puts both beside the same models without the axial branch ("sagittal only") and the class priors of the
# same studies: the gap between model and oracle is what localisation costs, the gap between oracle and priors what
# the classifiers learnt, the gap between sagittal only and with axial what the axial branch adds. The blend's
# weight and temperature per family are fit here, on these out-of-fold rows, and saved beside the models.

# %%
if run_cv:
    series, truth = tables.load_table(paths, "series"), tables.load_table(paths, "keypoints")
    evaluation = crossval.evaluate(paths, series, truth, targets, p.FOLDS, pre_cfg, infer_cfg, device)
    cv = evaluation.cv
    cv.submission.to_csv(paths.oof_dir / "oof_submission.csv", index=False)
    cv.blend.save(paths.blend_file)
    print("the blend of sagittal and axial predictions, fit out of fold:\n" + cv.blend_report.round(4).to_string())
    print("stage-1 localisation on held-out folds (256 grid):\n" + evaluation.errors.round(3).to_string(index=False))
    print(evaluation.scores.round(4).to_string(index=False))  # per condition and level, then the score's terms
    report.update(evaluation.entries)
elif not paths.blend_file.exists():  # the kernel would weigh sagittal and axial rows equally: say it before a sync
    missing = f"no CV here, and {paths.blend_file} does not exist: run 04 with its CV before `make sync`"
    warnings.warn(missing, stacklevel=1)

# %% [markdown]
# ### The series the localisers missed most
# Predicted (x) and true (o) keypoints on the middle slice, and the level crops each gives.

# %%
if run_cv:
    missed = crossval.worst_localised(paths, series, cv.keypoints, truth, pre_cfg, n=3)
    viz.save_figure(viz.localisation_figure(missed), paths.figures_dir / "worst_localisation.png")

# %% [markdown]
# ### The axial branch on a held-out study
# Every axial slice plane across the middle Sagittal T2 slice, coloured by the level it images; then each level's
# assigned slice with the level's true sagittal point projected (+), the true subarticular points (o) and the axial
# localiser's (x): left cyan, right magenta.

# %%
if run_cv and len(cv.prediction.axial_points):
    axial_study = int(cv.prediction.axial_points["study_id"].value_counts().index[0])  # the most levels placed
    samples = tables.load_table(paths, "axial_keypoints")  # the true subarticular points
    where = (paths, "train", axial_study, series, truth, pre_cfg.axial_max_distance_mm)
    picture = viz.level_picture(*where, samples=samples, predicted=cv.prediction.axial_points)
    viz.save_figure(viz.axial_levels_figure(picture), paths.figures_dir / "axial_predicted.png")

# %% [markdown]
# ## Test studies: every fold's models, averaged

# %%
faults = FaultLog()  # what each study lost, from the listing on: the summary at the end reads it
test_series = competition.series_table(paths, "test", faults)
study_ids = competition.study_ids(paths, "test")
cards = devices.inference_devices()  # both cards of a "T4 x2": the studies are split over them
models = ensemble.load_models_on(paths, cards)
print(f"{len(study_ids)} test studies on {', '.join(map(str, cards))}")
test = run.Inference(paths, models, pre_cfg, infer_cfg, faults=faults).predict(
    test_series, study_ids, submission.label_priors(targets)
)
submission.write_submission(test.submission, paths.submission_csv)
print(f"{paths.submission_csv}: {len(test.submission)} rows for {len(study_ids)} studies")
test.submission.head(10)

# %% [markdown]
# ## Hidden test labels (the synthetic data has them) and the CV report

# %%
if paths.data_file(TEST_LABELS_CSV).exists():
    hidden = competition.targets_table(competition.read_csv(paths, TEST_LABELS_CSV))
    report["test_terms"] = crossval.score_submission(test.submission, hidden)  # each term, to see what axial adds
    report["test_sagittal_only_terms"] = crossval.score_submission(test.sagittal, hidden)
    report["test_score"] = report["test_terms"]["score"]
    report["test_sagittal_only_score"] = report["test_sagittal_only_terms"]["score"]
    report["test_prior_score"] = crossval.score_submission(test.baseline, hidden)["score"]
report["test_axial_checks"] = crossval.axial_check_counts(test)
paths.cv_json.write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))

# %% [markdown]
# ## What each test study got
# Studies predicted fully, partly (which rows came from the class priors, and why) and not at all; every fault found
# in the inputs (a file, a slice, a series, a row) was also said when it was found.

# %%
print(test.summary())
