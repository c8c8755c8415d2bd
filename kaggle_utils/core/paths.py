"""Where things live: the competition folder, the working folder and every file name inside them.

This is the only module that knows a path. Locally the folders come from arguments, then the
``DATA_DIR`` / ``WORK_DIR`` environment variables, then the repository defaults (the synthetic demo
data and a git-ignored ``work/``). On Kaggle the competition folder and our datasets are found by
searching ``/kaggle/input``, because Kaggle has mounted them at more than one depth over time.
``KAGGLE_INPUT_DIR`` / ``KAGGLE_WORKING_DIR`` move ``/kaggle/input`` / ``/kaggle/working`` (the tests
simulate a kernel that way), and ``WEIGHTS_DIR`` points inference at a folder of checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kaggle_utils.core.constants import ALL_STUDIES_FOLD

ROOT_MARKER = "pyproject.toml"
"""The file beside the ``kaggle_utils`` folder that marks a checkout of the repository (an installed copy and the
uploaded code dataset have none)."""


def find_repo_root(start: Path | None = None) -> Path | None:
    """The checkout that holds this package: the nearest folder above ``start`` (default: this module) with the
    ``ROOT_MARKER`` beside a ``kaggle_utils`` package; None for an installed copy or the code dataset on Kaggle."""
    for folder in Path(start or __file__).resolve().parents:
        if (folder / ROOT_MARKER).is_file() and (folder / "kaggle_utils" / "__init__.py").is_file():
            return folder
    return None


REPO_ROOT = find_repo_root() or Path.cwd()
"""The checkout's root; elsewhere (an installed copy, a kernel) the working folder, where the defaults below go."""
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
COMPETITION_SLUG = "rsna-2024-lumbar-spine-degenerative-classification"
# Our Kaggle datasets and the submission kernel (owner/slug on Kaggle; the owner is chosen when publishing).
CODE_DATASET = "rsna24-kaggle-utils"
WEIGHTS_DATASET = "rsna24-weights"
WHEELS_DATASET = "rsna24-wheels"
KERNEL_SLUG = "rsna24-infer"
RESUME_SUFFIX = ".state.pt"  # training state of an unfinished run: never a model
WHEELS_MANIFEST = "wheels.json"  # inside the wheels dataset: what the kernel may install from it
BLEND_FILE = "blend.json"  # beside the checkpoints: the sagittal/axial blend fit out of fold (inference.blend)
PREFLIGHT_JSON = "preflight.json"  # `make preflight`'s findings (kaggle_utils.dev.preflight), beside its chart
PREFLIGHT_PNG = "preflight.png"

STAGE1, STAGE2, AXIAL_STACKS, AXIAL_CROPS = "stage1", "stage2", "axial_stacks", "axial_crops"
"""The folders of ``WORK_DIR`` that hold cached arrays, named as the ``Paths`` methods that give their files."""

DEFAULT_DATA_DIR = REPO_ROOT / "data" / "synthetic"
DEFAULT_WORK_DIR = REPO_ROOT / "work"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# What a GPU machine without internet needs beside the checkout (`make gpu-kit`; kaggle_utils.dev.gpu_checks)
GPU_KIT_DIR = REPO_ROOT / ".gpu"
# The seed's model shapes timed with its own settings (bench-train's reference): beside the repository, or in the kit
SEED_BENCH_SCRIPTS = (REPO_ROOT.parent / "shared" / "bench" / "seed_shapes_gpu.py", GPU_KIT_DIR / "seed_shapes_gpu.py")

# File names of the competition layout.
TRAIN_CSV = "train.csv"
TRAIN_SERIES_CSV = "train_series_descriptions.csv"
TEST_SERIES_CSV = "test_series_descriptions.csv"
TRAIN_COORDINATES_CSV = "train_label_coordinates.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
SUBMISSION_CSV = "submission.csv"  # what a code-competition kernel must write in its working folder
TEST_LABELS_CSV = "test_labels.csv"  # hidden test labels; only the synthetic data has them
LABEL_FLIPS_CSV = "label_flips.csv"  # train.csv cells the synthetic generator flipped on purpose (--label-noise)

# The solution's metadata files, read by their own names from DATA_DIR or from any attached Kaggle dataset.
COORDS_V7_CSV = "coords_v7.csv"  # corrected sagittal keypoints, 10 per series (the solution's metadata dataset)
COORDS_IMPROVED_CSV = "coords_rsna_improved.csv"  # the same points per condition (the coordinate-pretraining dataset)
SOLUTION_METADATA_CSV = "metadata.csv"  # the solution's series and folds (study_id, series_id, ..., fold)


def kaggle_input() -> Path:
    """Kaggle's read-only input folder (``KAGGLE_INPUT_DIR`` overrides ``/kaggle/input``)."""
    return Path(os.environ.get("KAGGLE_INPUT_DIR") or KAGGLE_INPUT)


def kaggle_working() -> Path:
    """Kaggle's output folder, where ``submission.csv`` must land (``KAGGLE_WORKING_DIR`` overrides it)."""
    return Path(os.environ.get("KAGGLE_WORKING_DIR") or KAGGLE_WORKING)


def is_kaggle() -> bool:
    """True inside a Kaggle kernel (interactive, batch or the scoring re-run)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or kaggle_input().is_dir()


def find_under(root: Path, marker: str, max_depth: int = 3) -> Path | None:
    """The shallowest folder under ``root`` (depth <= max_depth) that contains ``marker``.

    A bounded glob per depth instead of a recursive walk: the competition folder holds hundreds of
    thousands of DICOM files that a walk would visit.
    """
    for depth in range(max_depth + 1):
        hits = sorted(root.glob("/".join(["*"] * depth + [marker])))
        if hits:
            return hits[0].parent
    return None


def find_competition_dir(root: Path | None = None) -> Path:
    """The mounted competition folder, wherever Kaggle put it under ``root`` (default: Kaggle's input)."""
    root = root or kaggle_input()
    found = find_under(root, TEST_SERIES_CSV)
    if found is None:
        raise FileNotFoundError(f"no folder with {TEST_SERIES_CSV} under {root}: add the competition as a source")
    return found


def find_dataset(slug: str, root: Path | None = None, max_depth: int = 3) -> Path | None:
    """The folder of one of our datasets under Kaggle's input: ``<root>/<slug>`` or deeper
    (``<root>/datasets/<owner>/<slug>`` in the newer layout); None when it is not attached."""
    root = root or kaggle_input()
    for depth in range(max_depth + 1):
        hits = sorted(h for h in root.glob("/".join(["*"] * depth + [slug])) if h.is_dir())
        if hits:
            return hits[0]
    return None


def find_metadata(name: str, data_dir: Path) -> Path | None:
    """A metadata file by name: ``data_dir/name``, else the shallowest ``name`` in an attached Kaggle dataset
    (datasets are read-only folders of their own there, never inside the competition folder)."""
    if (data_dir / name).is_file():
        return data_dir / name
    root = kaggle_input()
    found = find_under(root, name) if root.is_dir() else None
    return found / name if found is not None else None


_CHECKPOINT_NAME = re.compile(r"^(?P<preset>.+)-(?P<fold>f\d+|all)-s(?P<seed>\d+)$")


def checkpoint_parts(path: Path) -> tuple[str, int, int] | None:
    """(preset, fold, seed) of a checkpoint's or a resume state's file name (``Paths.checkpoint``); None for a file
    not named so."""
    stem = path.name.removesuffix(RESUME_SUFFIX).removesuffix(".pt")
    match = _CHECKPOINT_NAME.match(stem)
    if match is None:
        return None
    fold = ALL_STUDIES_FOLD if match["fold"] == "all" else int(match["fold"][1:])
    return match["preset"], fold, int(match["seed"])


def resume_state(checkpoint: Path) -> Path:
    """The resume state of a run in progress, beside its future checkpoint; removed when the run ends."""
    return checkpoint.with_suffix(RESUME_SUFFIX)


def finished_checkpoints(folder: Path) -> list[Path]:
    """``folder``'s model weights (``*.pt``), without the ``*.state.pt`` of an interrupted run."""
    return sorted(p for p in Path(folder).glob("*.pt") if not p.name.endswith(RESUME_SUFFIX))


def wheels_dataset() -> Path | None:
    """The folder of the attached wheels dataset (what the kernel may install offline), or None."""
    found = find_dataset(WHEELS_DATASET)
    return found if found and (found / WHEELS_MANIFEST).is_file() else None


def _from_env(value: str | os.PathLike | None, env_name: str, kaggle_default: Path | None, default: Path) -> Path:
    if value:
        return Path(value).expanduser().resolve()
    if os.environ.get(env_name):
        return Path(os.environ[env_name]).expanduser().resolve()
    if kaggle_default is not None and is_kaggle():
        return kaggle_default
    return default


@dataclass(frozen=True)
class Paths:
    """The input folder (competition layout) and the output folder, with every file name derived.

    ``weights_dir``, when set, is where checkpoints are read and written instead of ``work_dir/models``:
    on Kaggle the weights dataset (read-only, so train there without it attached).

    ``run``, when set, names a training round with its own sub-folder ``work_dir/{run}`` for checkpoints, OOF
    predictions, ``submission.csv`` and ``cv.json`` (round 2 of notebooks/05_denoise trains into ``denoised``), while
    the tables and cached arrays stay shared; "" is the plain layout.
    """

    data_dir: Path
    work_dir: Path
    weights_dir: Path | None = None
    run: str = ""

    @classmethod
    def resolve(
        cls,
        data_dir: str | os.PathLike | None = None,
        work_dir: str | os.PathLike | None = None,
        weights_dir: str | os.PathLike | None = None,
    ) -> Paths:
        """Arguments win, then ``DATA_DIR`` / ``WORK_DIR`` / ``WEIGHTS_DIR``, then Kaggle's folders, then the
        repo defaults."""
        kaggle = is_kaggle()
        kaggle_data = find_competition_dir() if kaggle and not (data_dir or os.environ.get("DATA_DIR")) else None
        weights = weights_dir or os.environ.get("WEIGHTS_DIR") or (find_dataset(WEIGHTS_DATASET) if kaggle else None)
        return cls(
            data_dir=_from_env(data_dir, "DATA_DIR", kaggle_data, DEFAULT_DATA_DIR),
            work_dir=_from_env(work_dir, "WORK_DIR", kaggle_working() if kaggle else None, DEFAULT_WORK_DIR),
            weights_dir=Path(weights).expanduser().resolve() if weights else None,
        )

    # --- inputs -----------------------------------------------------------------------------
    def data_file(self, name: str) -> Path:
        """A file of the competition folder by its name (one of the ``*_CSV`` constants)."""
        return self.data_dir / name

    def images_dir(self, split: str) -> Path:
        """``train_images`` or ``test_images``."""
        return self.data_dir / f"{split}_images"

    def series_dir(self, split: str, study_id: int, series_id: int) -> Path:
        return self.images_dir(split) / str(study_id) / str(series_id)

    # --- outputs ----------------------------------------------------------------------------
    def with_run(self, run: str) -> Paths:
        """The same folders with the outputs of training round ``run`` in ``work_dir/{run}`` ("" = the plain layout)."""
        return dataclasses.replace(self, run=run)

    @property
    def run_dir(self) -> Path:
        """Where this round's checkpoints, OOF predictions and reports go: ``work_dir`` or ``work_dir/{run}``."""
        return self.work_dir / self.run if self.run else self.work_dir

    @property
    def tables_dir(self) -> Path:
        return self.work_dir / "tables"

    def table(self, name: str) -> Path:
        """A hand-off table of the pipeline (``series``, ``folds``, ``targets``, ``keypoints``, ...)."""
        return self.tables_dir / f"{name}.csv"

    def cache_dir(self, root: str) -> Path:
        """A folder of cached arrays (``CACHE_ROOTS``), each with the stamp of the parameters that made them."""
        return self.work_dir / root

    def stage1_array(self, study_id: int, series_id: int) -> Path:
        """Stage-1 volume: (N, 256, 256) uint8, every slice of the series, left to right."""
        return self.cache_dir(STAGE1) / str(study_id) / f"{series_id}.npy"

    def stage2_array(self, study_id: int, series_id: int, root: str = STAGE2) -> Path:
        """Stage-2 crops (5, N, 256, 256) uint8; training crops use ``stage2``, crops with stage 1's error others."""
        return self.cache_dir(root) / str(study_id) / f"{series_id}.npy"

    def axial_stack(self, study_id: int, series_id: int, level: str, instance: int) -> Path:
        """An axial level's slices for its localiser: (5, 256, 256) uint8, the assigned slice (``instance``) in the
        middle of its block's neighbours, top to bottom."""
        return self.cache_dir(AXIAL_STACKS) / str(study_id) / f"{series_id}_{level}_{instance}.npy"

    def axial_crops(self, study_id: int, series_id: int, level: str, instance: int) -> Path:
        """An axial level's crops: (3, 5, 256, 256) uint8, the centre, left and mirrored right crop of each slice of
        its stack (``axial_crops.level_crops``)."""
        return self.cache_dir(AXIAL_CROPS) / str(study_id) / f"{series_id}_{level}_{instance}.npy"

    @property
    def blend_file(self) -> Path:
        """The blend of sagittal and axial predictions that 04's CV fits, beside the checkpoints."""
        return self.models_dir / BLEND_FILE

    @property
    def models_dir(self) -> Path:
        """Checkpoints: ``weights_dir`` when set (the weights dataset on Kaggle), else ``work_dir/models``."""
        return self.weights_dir or self.run_dir / "models"

    def checkpoint(self, preset: str, fold: int, seed: int) -> Path:
        """Model weights ``models/{preset}-f{fold}-s{seed}.pt`` (``{preset}-all-s{seed}.pt`` for a final model of
        fold -1, trained on every study); the JSON sidecar sits beside it."""
        return self.models_dir / f"{preset}-{'all' if fold == ALL_STUDIES_FOLD else f'f{fold}'}-s{seed}.pt"

    def checkpoints(self) -> list[Path]:
        """The finished checkpoints in ``models/``, sorted; an interrupted run's resume state is not one."""
        return finished_checkpoints(self.models_dir)

    @property
    def oof_dir(self) -> Path:
        return self.run_dir / "oof"

    @property
    def figures_dir(self) -> Path:
        return self.work_dir / "figures"

    @property
    def submission_csv(self) -> Path:
        return self.run_dir / SUBMISSION_CSV

    @property
    def cv_json(self) -> Path:
        return self.run_dir / "cv.json"

    @property
    def preflight_dir(self) -> Path:
        """``make preflight``'s report: ``preflight.json`` and ``preflight.png``."""
        return self.work_dir / "preflight"

    @property
    def denoise_json(self) -> Path:
        """Report of notebooks/05_denoise: detection counts and the CV before and after round 2."""
        return self.run_dir / "denoise.json"
