"""Faults in a run's inputs: said when found and kept per study; and the kernel's notebook on test data with several
faults at once, against the same notebook on the clean data."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from kaggle_utils.core.constants import AXIAL_T2, LABEL_COLUMNS, SAGITTAL_T1, SAGITTAL_T2, SEVERITY_COLUMNS
from kaggle_utils.core.faults import FaultLog
from kaggle_utils.core.paths import Paths
from kaggle_utils.dev import bench_infer
from kaggle_utils.dev.runner import run_notebook
from kaggle_utils.dev.synthetic import make_dataset
from kaggle_utils.io import competition

KERNEL = Path(__file__).parent.parent / "notebooks" / "04_inference.py"


def test_a_fault_is_said_at_once_and_kept_for_the_summary() -> None:
    log = FaultLog()
    with pytest.warns(UserWarning, match="study 7 series 70: slice left out: 3.dcm"):
        log.report(7, 70, "slice left out: 3.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.report(8, None, "axial branch not used")
    assert len(log) == 2
    assert log.frame().to_numpy().tolist() == [[7, 70, "slice left out: 3.dcm"], [8, -1, "axial branch not used"]]


@pytest.fixture(scope="module")
def kernel_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seven test studies in the competition layout and a models folder of small untrained checkpoints."""
    root = tmp_path_factory.mktemp("kernel")
    data = make_dataset(root / "clean", n_train=4, n_test=7, seed=5, workers=1, progress=False)
    bench = Paths(data, root / "bench")
    bench_infer.write_bench_models(bench, bench, competition.series_table(bench, "train"), "smoke")
    return data, bench.models_dir


def _kernel(data: Path, work: Path, models: Path, capsys: pytest.CaptureFixture) -> tuple[pd.DataFrame, str]:
    """Notebook 04 as the kernel runs it (no CV), headless: its submission and what the console showed."""
    env = {"DATA_DIR": str(data), "WORK_DIR": str(work), "WEIGHTS_DIR": str(models), "RUN_CV": "false"}
    env["INFER_OVERRIDES"] = '{"tta_angles": [0]}'
    capsys.readouterr()
    run_notebook(KERNEL, None, env, timeout=900)
    return pd.read_csv(work / "submission.csv", dtype=str), capsys.readouterr().out


class Faults:
    """Faults written into a copy of the competition folder, one study each, and what the console must name."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.listing = pd.read_csv(data / "test_series_descriptions.csv")
        self.studies = sorted(self.listing["study_id"].unique())
        self.named: list[str] = []  # said on the console when found
        self.summed_up: list[str] = []  # said again in the summary at the end

    def series(self, study: int, description: str) -> tuple[int, Path]:
        rows = self.listing[(self.listing["study_id"] == study) & (self.listing["series_description"] == description)]
        series_id = int(rows["series_id"].iloc[0])
        return series_id, self.data / "test_images" / str(study) / str(series_id)

    def edit_slice(self, path: Path, **tags: object) -> None:
        ds = pydicom.dcmread(path)
        for tag, value in tags.items():
            setattr(ds, tag, value)
        ds.save_as(path)

    def write_listing(self, edit) -> None:
        lines = (self.data / "test_series_descriptions.csv").read_text().splitlines()
        (self.data / "test_series_descriptions.csv").write_text("\n".join(edit(lines)) + "\n")


def _inject(data: Path) -> Faults:
    faults = Faults(data)
    a, b, c, d, e, f, _untouched = faults.studies
    # a: one T2 slice whose orientation places it nowhere; one zero-byte T1 file
    _, t2 = faults.series(a, SAGITTAL_T2)
    victim = sorted(t2.glob("*.dcm"))[3]
    faults.edit_slice(victim, ImageOrientationPatient=[1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    empty = sorted(faults.series(a, SAGITTAL_T1)[1].glob("*.dcm"))[0]
    empty.write_bytes(b"")
    faults.named += [f"{victim}: degenerate ImageOrientationPatient", f"{empty}: an empty file"]
    # b: its T1 row without a series id, after a blank line; c: a T1 described as no view is, a T2 leniently
    t1_b, _ = faults.series(b, SAGITTAL_T1)
    t1_c, _ = faults.series(c, SAGITTAL_T1)
    t2_c, _ = faults.series(c, SAGITTAL_T2)

    # f: its T1 and T2 listed under each other's description, which their headers' timings undo
    t1_f, _ = faults.series(f, SAGITTAL_T1)
    t2_f, _ = faults.series(f, SAGITTAL_T2)

    def listing(lines: list[str]) -> list[str]:
        edited = [
            line.replace(f",{t1_b},", ",,")
            .replace(f"{t1_c},{SAGITTAL_T1}", f"{t1_c},Coronal T1")
            .replace(f"{t2_c},{SAGITTAL_T2}", f"{t2_c},sagittal t2 stir")
            .replace(f"{t1_f},{SAGITTAL_T1}", f"{t1_f},{SAGITTAL_T2}")
            .replace(f"{t2_f},{SAGITTAL_T2}", f"{t2_f},{SAGITTAL_T1}")
            for line in lines
        ]
        return [edited[0], "", *edited[1:], f"998,4242,{AXIAL_T2}"]  # 998: an Axial T2 series alone

    faults.write_listing(listing)
    faults.named += [
        f"(study {b}): series_id '' is not an id",
        "line 2: empty line",
        f"study {c} series {t1_c} 'Coronal T1'",
    ]
    faults.summed_up += [f"study {c}", f"series {t1_c}: not read: 'Coronal T1' is no known view"]
    faults.summed_up += ["not at all: study 998", "no sagittal series to read"]
    # c: a T2 slice stored twice; f: its T2's orientation directions written 1.5 times too long (both read as before)
    t2_c_folder = faults.series(c, SAGITTAL_T2)[1]
    copied = sorted(t2_c_folder.glob("*.dcm"))[2]
    shutil.copy(copied, t2_c_folder / "9999.dcm")
    faults.named += [f"{t2_c_folder / '9999.dcm'}: a copy of {copied.name}"]
    for path in faults.series(f, SAGITTAL_T2)[1].glob("*.dcm"):
        ds = pydicom.dcmread(path)
        faults.edit_slice(path, ImageOrientationPatient=[1.5 * float(v) for v in ds.ImageOrientationPatient])
    for path in faults.series(f, SAGITTAL_T1)[1].glob("*.dcm"):  # and its T1 stored facing the other way
        _store_mirrored(path)
    faults.named += [
        f"study {f} series {t1_f}: listed as {SAGITTAL_T2}, but its header's timings (TR 600 ms, TE 12 ms) are "
        f"T1-weighted: read as {SAGITTAL_T1}",
        f"study {f} series {t2_f}: listed as {SAGITTAL_T1}, but its header's timings",
    ]
    # d: a T1 series with no image; e: a T1 series of two slices
    t1_d, folder = faults.series(d, SAGITTAL_T1)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = bytes(len(ds.PixelData))
        ds.save_as(path)
    t1_e, folder = faults.series(e, SAGITTAL_T1)
    for path in sorted(folder.glob("*.dcm"))[2:]:
        path.unlink()
    faults.named += [
        f"study {d} series {t1_d}: not used: ",
        "no image",
        f"study {e} series {t1_e}: not used: ",
        "2 usable",
    ]
    # b: its T2 listed as sagittal, its images axial; d: its axial series' images sagittal; e: its T2 slices at one
    # position (each study's other faults above stay as they are)
    t2_b, folder = faults.series(b, SAGITTAL_T2)
    for path in folder.glob("*.dcm"):
        faults.edit_slice(path, ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    faults.named += [f"study {b} series {t2_b}: not used: ", "but its slices are axial, not sagittal: not read as one"]
    axial_d, folder = faults.series(d, AXIAL_T2)
    for path in folder.glob("*.dcm"):
        faults.edit_slice(path, ImageOrientationPatient=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    faults.named += [f"study {d} series {axial_d}: axial series not used: none of its images is axial"]
    t2_e, folder = faults.series(e, SAGITTAL_T2)
    for path in folder.glob("*.dcm"):
        faults.edit_slice(path, ImagePositionPatient=[0.0, 0.0, 0.0])
    faults.named += [f"study {e} series {t2_e}: its "]
    faults.summed_up += [f"series {t2_e}: its ", "slices claim one position"]
    # a study the sample submission expects that no series lists
    with (data / "sample_submission.csv").open("a") as handle:
        handle.write("999_spinal_canal_stenosis_l1_l2,0.3,0.3,0.4\n")
    faults.named += [
        "expects studies that test_series_descriptions.csv does not list (they get the class priors): [999]"
    ]
    return faults


def _store_mirrored(path: Path) -> None:
    """A slice stored with its columns the other way round, its header's geometry true of the stored pixels."""
    ds = pydicom.dcmread(path)
    orientation, spacing = np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.PixelSpacing, float)
    pixels = ds.pixel_array
    position = np.asarray(ds.ImagePositionPatient, float) + (pixels.shape[1] - 1) * spacing[1] * orientation[:3]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in np.r_[-orientation[:3], orientation[3:]]]
    ds.PixelData = np.ascontiguousarray(pixels[:, ::-1]).tobytes()
    ds.save_as(path)


@pytest.mark.slow
def test_faults_in_the_test_data_cost_only_their_studies_and_each_is_named(kernel_inputs, tmp_path: Path, capsys):
    data, models = kernel_inputs
    clean, _ = _kernel(data, tmp_path / "clean", models, capsys)
    shutil.copytree(data, tmp_path / "faulty")
    faults = _inject(tmp_path / "faulty")
    faulty, console = _kernel(tmp_path / "faulty", tmp_path / "work", models, capsys)

    studies = [*faults.studies, 998, 999]
    assert sorted(faulty["row_id"]) == sorted(f"{s}_{c}" for s in studies for c in LABEL_COLUMNS)
    values = faulty[list(SEVERITY_COLUMNS)].astype(float).to_numpy()
    assert np.isfinite(values).all() and np.allclose(values.sum(axis=1), 1)
    clean, faulty = clean.set_index("row_id"), faulty.set_index("row_id")
    untouched = [r for r in clean.index if r.startswith(f"{faults.studies[-1]}_")]
    pd.testing.assert_frame_equal(faulty.loc[untouched], clean.loc[untouched])  # the same text, to the last digit
    lenient = [r for r in clean.index if r.startswith(f"{faults.studies[2]}_spinal")]  # its T2 read as before
    pd.testing.assert_frame_equal(faulty.loc[lenient], clean.loc[lenient])
    swapped = [r for r in clean.index if r.startswith(f"{faults.studies[5]}_")]  # read as its headers say
    pd.testing.assert_frame_equal(faulty.loc[swapped], clean.loc[swapped])
    for text in faults.named:
        assert text in console, text
    assert "9 studies: " in console and "not at all: study 999" in console
    summary = console[console.index("9 studies: ") :]
    for text in faults.summed_up:
        assert text in summary, text
