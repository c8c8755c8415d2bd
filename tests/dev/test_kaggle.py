"""Publishing to Kaggle, offline: ``make sync|sync-code|submit|wheels`` and each step of ``make submit`` against a
fake ``kaggle`` CLI (tests/dev/fakebin) that behaves as kaggle 2.2.5 or 1.7.4.5, runs the real CLI's local checks and
records what it was given, and the staged kernel notebook executed in a simulated ``/kaggle/input``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from wheelhouse import build_wheel, pip_resolves

from kaggle_utils.core.constants import LABEL_COLUMNS
from kaggle_utils.core.paths import (
    CODE_DATASET,
    COMPETITION_SLUG,
    KERNEL_SLUG,
    WEIGHTS_DATASET,
    WHEELS_DATASET,
    Paths,
    wheels_dataset,
)
from kaggle_utils.core.wheels import Wheel, read_manifest, write_manifest
from kaggle_utils.dev import kaggle
from kaggle_utils.dev.runner import run_notebook
from kaggle_utils.models.checkpoints import MODEL_FIELDS_KEY

REPO = Path(__file__).resolve().parents[2]
PYTHONS = ("3.11", "3.12", "3.13")  # the Pythons of Kaggle's and Colab's images
FAKEBIN = Path(__file__).parent / "fakebin"
NOTEBOOKS = REPO / "notebooks"
CLI_VERSIONS = ("2.2.5", "1.7.4.5")  # what the fake CLI behaves as (FAKE_KAGGLE_VERSION)
UPLOADS = (["datasets", "create"], ["datasets", "version"], ["kernels", "push"])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with a legacy ``kaggle.json`` for the user ``tester``."""
    folder = tmp_path / "home"
    (folder / ".kaggle").mkdir(parents=True)
    (folder / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "tester", "key": "not-a-key"}))
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A WORK_DIR whose models/ holds one checkpoint with its sidecar, plus files that must not be published."""
    models = tmp_path / "work" / "models"
    models.mkdir(parents=True)
    torch.save({"head.weight": torch.full((2, 3), 0.1), MODEL_FIELDS_KEY: "{}"}, models / "sp1-f0-s42.pt")
    (models / "sp1-f0-s42.json").write_text(json.dumps({"fold": 0}))
    (models / "sp1-f0-s42.log.csv").write_text("epoch\n0\n")
    (models / "fo-f1-s42.state.pt").write_bytes(b"an interrupted run")  # neither a model nor uploaded
    return tmp_path / "work"


def make(target: str, tmp_path: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``make target`` with the fake CLI first on PATH and nothing of the caller's Kaggle set-up."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE") and k != "MAKEFLAGS"}
    clean.update(PATH=f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    clean.update(FAKE_KAGGLE_LOG=str(tmp_path / "kaggle.log"), **env)
    command = ["make", "-C", str(REPO), "--no-print-directory", target, f"PY={sys.executable}", "KAGGLE_POLL=0"]
    command += [f"KAGGLE_BUILD={tmp_path / 'build'}", f"WORK_DIR={tmp_path / 'work'}", *args]
    return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=120)


def calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "kaggle.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def uploads(tmp_path: Path) -> list[dict]:
    return [c for c in calls(tmp_path) if c["argv"][:2] in UPLOADS]


def argvs(tmp_path: Path) -> list[list[str]]:
    return [c["argv"][:2] for c in calls(tmp_path)]


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout


def staged_code_files() -> list[str]:
    """What the code dataset must hold: every module of the package, its sub-packages' ``__init__.py`` included,
    but not the development tools (``dev/``, which the kernel never imports) nor caches."""
    package = REPO / "kaggle_utils"
    modules = [p.relative_to(REPO) for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(str(p) for p in modules if p.parts[1] != "dev")


def assert_dataset_metadata(meta: dict, owner: str, slug: str) -> None:
    assert meta["id"] == f"{owner}/{slug}"
    assert 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_sync_creates_then_versions_code_and_weights(tmp_path, home, work, cli_version):
    first = make("sync", tmp_path, home, FAKE_KAGGLE_VERSION=cli_version)
    assert first.returncode == 0, first.stdout + first.stderr
    created = uploads(tmp_path)
    assert [c["argv"][:2] for c in created] == [["datasets", "create"]] * 2
    for call in created:
        assert call["argv"][call["argv"].index("--dir-mode") + 1] == "zip"
    code, weights = created
    assert_dataset_metadata(code["metadata"], "tester", CODE_DATASET)
    assert_dataset_metadata(weights["metadata"], "tester", WEIGHTS_DATASET)
    assert sorted(code["files"]) == ["dataset-metadata.json", *staged_code_files()]
    assert "kaggle_utils/core/paths.py" in code["files"] and "kaggle_utils/inference/run.py" in code["files"]
    assert weights["files"] == ["dataset-metadata.json", "sp1-f0-s42.json", "sp1-f0-s42.pt"]
    staged = tmp_path / "build" / WEIGHTS_DATASET
    assert torch.load(staged / "sp1-f0-s42.pt", weights_only=True)["head.weight"].dtype == torch.float16
    assert json.loads((staged / "sp1-f0-s42.json").read_text()) == {"fold": 0, "stored_as": "float16"}
    assert "weights: 1 checkpoints" in first.stderr and "in fp16" in first.stderr
    assert f"kaggle {cli_version}: API key from {home / '.kaggle' / 'kaggle.json'} (user tester)" in first.stderr

    (tmp_path / "kaggle.log").unlink()
    existing = f"tester/{CODE_DATASET},tester/{WEIGHTS_DATASET}"
    second = make(
        "sync", tmp_path, home, "MSG=retrained", FAKE_KAGGLE_EXISTING=existing, FAKE_KAGGLE_VERSION=cli_version
    )
    assert second.returncode == 0, second.stdout + second.stderr
    versioned = uploads(tmp_path)
    assert [c["argv"][:2] for c in versioned] == [["datasets", "version"]] * 2
    for call in versioned:
        message = call["argv"][call["argv"].index("-m") + 1]
        assert git_commit().strip() in message and "retrained" in message
        assert call["argv"][call["argv"].index("--dir-mode") + 1] == "zip"
        assert "--delete-old-versions" not in call["argv"]


def test_sync_code_publishes_the_code_alone_and_old_weights_can_go(tmp_path, home, work):
    existing = f"tester/{CODE_DATASET},tester/{WEIGHTS_DATASET}"
    result = make("sync-code", tmp_path, home, FAKE_KAGGLE_EXISTING=existing)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c["metadata"]["id"] for c in uploads(tmp_path)] == [f"tester/{CODE_DATASET}"]
    assert not (tmp_path / "build" / WEIGHTS_DATASET).exists()  # nothing of the weights is staged
    (tmp_path / "kaggle.log").unlink()
    result = make("sync-weights", tmp_path, home, "DELETE_OLD_WEIGHTS=1", FAKE_KAGGLE_EXISTING=existing)
    assert result.returncode == 0, result.stdout + result.stderr
    (weights,) = uploads(tmp_path)
    assert weights["metadata"]["id"] == f"tester/{WEIGHTS_DATASET}" and "--delete-old-versions" in weights["argv"]


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_sync_fails_when_kaggle_refuses_an_upload_though_the_cli_exits_0(tmp_path, home, work, cli_version):
    refuse = json.dumps({"create": "The requested title is already in use"})
    result = make("sync", tmp_path, home, FAKE_KAGGLE_VERSION=cli_version, FAKE_KAGGLE_REFUSE=refuse)
    assert result.returncode != 0
    said = f'creating dataset tester/{CODE_DATASET}: the CLI said "Dataset creation error: The requested title'
    assert said in result.stderr and "(exit 0)" in result.stderr
    assert [c["metadata"]["id"] for c in uploads(tmp_path)] == [f"tester/{CODE_DATASET}"]  # the weights never go


def test_owner_comes_from_kaggle_user_or_the_environment(tmp_path, work):
    bare_home = tmp_path / "bare"
    bare_home.mkdir()
    result = make("sync-code", tmp_path, bare_home, KAGGLE_USERNAME="envuser", KAGGLE_KEY="k")
    assert result.returncode == 0, result.stdout + result.stderr
    assert uploads(tmp_path)[0]["metadata"]["id"] == f"envuser/{CODE_DATASET}"
    (tmp_path / "kaggle.log").unlink()
    result = make("sync-code", tmp_path, bare_home, "KAGGLE_USER=team-x", KAGGLE_USERNAME="envuser", KAGGLE_KEY="k")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c["metadata"]["id"] for c in uploads(tmp_path)] == [f"team-x/{CODE_DATASET}"]


OUR_DATASETS = ",".join(f"tester/{slug}" for slug in (CODE_DATASET, WEIGHTS_DATASET, WHEELS_DATASET))


def test_submit_pushes_the_offline_kernel(tmp_path, home, work):
    result = make("submit", tmp_path, home, FAKE_KAGGLE_EXISTING=OUR_DATASETS)
    assert result.returncode == 0, result.stdout + result.stderr
    (push,) = uploads(tmp_path)
    assert push["argv"][:2] == ["kernels", "push"]
    meta = push["metadata"]
    assert meta["id"] == f"tester/{KERNEL_SLUG}" and len(meta["title"]) >= 5
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["kernel_type"] == "notebook"
    assert meta["competition_sources"] == [COMPETITION_SLUG]
    assert meta["dataset_sources"] == [f"tester/{s}" for s in (CODE_DATASET, WEIGHTS_DATASET, WHEELS_DATASET)]
    code_file = tmp_path / "build" / KERNEL_SLUG / meta["code_file"]
    notebook = nbformat.read(code_file, as_version=4)
    nbformat.validate(notebook)
    assert not any(cell.get("outputs") for cell in notebook.cells)
    assert "install_offline" in notebook.cells[1].source  # the bootstrap with the offline install
    assert ["competitions", "submit"] not in argvs(tmp_path)  # only on request


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_the_whole_road_from_a_fresh_clone(tmp_path, home, work, cli_version):
    """sync, then submit: push, follow the run (queued, running, complete), fetch its output, submit it."""
    cli = {"FAKE_KAGGLE_VERSION": cli_version, "FAKE_KAGGLE_EXISTING": f"tester/{WHEELS_DATASET}"}
    result = make("sync", tmp_path, home, **cli)
    assert result.returncode == 0, result.stdout + result.stderr
    states = json.dumps(["queued", "running", "complete"])
    result = make(
        "submit", tmp_path, home, "COMPETITION_SUBMIT=1", "MSG=first", FAKE_KAGGLE_KERNEL_STATES=states, **cli
    )
    assert result.returncode == 0, result.stdout + result.stderr
    road = argvs(tmp_path)[road_start(tmp_path) :]
    steps = [["kernels", "push"]] + [["kernels", "status"]] * 3 + [["kernels", "output"], ["competitions", "submit"]]
    assert road == steps
    for state in ("queued", "running", "complete"):
        assert f"kernel tester/{KERNEL_SLUG}: {state}" in result.stderr
    submit = calls(tmp_path)[-1]["argv"]
    assert submit[submit.index("-k") + 1] == f"tester/{KERNEL_SLUG}" and submit[submit.index("-v") + 1] == "1"
    assert "first" in submit[submit.index("-m") + 1]
    output = tmp_path / "build" / "output"
    assert (output / "submission.csv").is_file() and (output / f"{KERNEL_SLUG}.log").is_file()
    assert f"{output / 'submission.csv'}: 4 rows" in result.stderr


def road_start(tmp_path: Path) -> int:
    """Where the kernel's part of the log begins (after the datasets were published and checked)."""
    return next(i for i, argv in enumerate(argvs(tmp_path)) if argv[0] != "datasets")


def test_each_step_of_submit_runs_alone(tmp_path, home, work):
    cli = {"FAKE_KAGGLE_EXISTING": OUR_DATASETS}
    for target in ("kernel-push", "kernel-follow", "kernel-output", "competition-submit"):
        result = make(target, tmp_path, home, **cli)
        assert result.returncode == 0, (target, result.stdout + result.stderr)
    assert argvs(tmp_path)[road_start(tmp_path) :] == [
        ["kernels", "push"],
        ["kernels", "status"],
        ["kernels", "output"],
        ["competitions", "submit"],
    ]
    assert json.loads((tmp_path / "build" / "kernel-push.json").read_text())["version"] == 1
    (tmp_path / "build" / "kernel-push.json").unlink()  # a fresh clone knows no pushed version
    result = make("competition-submit", tmp_path, home, **cli)
    assert result.returncode != 0 and "KERNEL_VERSION=<N>" in result.stderr
    result = make("competition-submit", tmp_path, home, "KERNEL_VERSION=1", **cli)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_a_failed_run_stops_the_road_with_the_end_of_its_log(tmp_path, home, work, cli_version):
    cli = {"FAKE_KAGGLE_EXISTING": OUR_DATASETS, "FAKE_KAGGLE_VERSION": cli_version}
    states = json.dumps(["running", "error"])
    failure = "Your notebook tried to allocate more memory than is available."
    result = make(
        "submit",
        tmp_path,
        home,
        "COMPETITION_SUBMIT=1",
        FAKE_KAGGLE_KERNEL_STATES=states,
        FAKE_KAGGLE_FAILURE=failure,
        **cli,
    )
    assert result.returncode != 0
    assert f'kernel tester/{KERNEL_SLUG} ended error: "{failure}"' in result.stderr
    assert "RuntimeError: CUDA out of memory" in result.stderr  # the end of the run's log
    assert ["competitions", "submit"] not in argvs(tmp_path)


def test_a_run_without_submission_csv_fails_its_output_step(tmp_path, home, work):
    cli = {"FAKE_KAGGLE_EXISTING": OUR_DATASETS, "FAKE_KAGGLE_NO_SUBMISSION": "1"}
    result = make("submit", tmp_path, home, **cli)
    assert result.returncode != 0 and f"kernel tester/{KERNEL_SLUG} wrote no submission.csv" in result.stderr


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_a_refused_push_fails_though_the_cli_exits_0(tmp_path, home, work, cli_version):
    cli = {"FAKE_KAGGLE_EXISTING": OUR_DATASETS, "FAKE_KAGGLE_VERSION": cli_version}
    result = make("kernel-push", tmp_path, home, FAKE_KAGGLE_REFUSE=json.dumps({"push": "Notebook not found"}), **cli)
    assert result.returncode != 0
    assert f'pushing kernel tester/{KERNEL_SLUG}: the CLI said "Kernel push error: Notebook not found" (exit 0)' in (
        result.stderr
    )
    assert not (tmp_path / "build" / "kernel-push.json").exists()


def test_make_help_lists_the_kaggle_targets():
    listed = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "help"], capture_output=True, text=True)
    for target in ("sync", "sync-code", "sync-weights", "submit", "kernel-push", "kernel-follow", "kernel-output"):
        assert f"{target} " in listed.stdout
    assert "competition-submit" in listed.stdout


def test_wheels_pins_the_versions_installed_here_for_every_python(tmp_path, home):
    downloads = tmp_path / "build" / "downloads"
    timm, rle = importlib.metadata.version("timm"), importlib.metadata.version("pylibjpeg-rle")
    build_wheel(downloads, "timm", "1.0.9")  # an older release in the download folder is not shipped
    build_wheel(downloads, "timm", timm)
    for python in PYTHONS:
        tag = f"cp{python.replace('.', '')}"
        build_wheel(downloads, "pylibjpeg-rle", rle, tag=f"{tag}-{tag}-manylinux_2_17_x86_64", module="rle")
    result = make("wheels", tmp_path, home, "PIP=true", "WHEELS=timm pylibjpeg-rle")  # `true download ...`: a no-op
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pins: timm=={timm} pylibjpeg-rle=={rle}" in result.stdout
    (create,) = uploads(tmp_path)
    assert_dataset_metadata(create["metadata"], "tester", WHEELS_DATASET)
    staged = tmp_path / "build" / WHEELS_DATASET
    manifest = read_manifest(staged)
    assert [(w.name, w.version) for w in manifest] == [("timm", timm), ("pylibjpeg-rle", rle)]
    assert manifest[0].accepts == ">=1.0.9"  # the range pyproject declares
    assert "timm-1.0.9-py3-none-any.whl" not in create["files"]
    for python in PYTHONS:  # what the kernel's pip would pick on each of Kaggle's Pythons
        for wheel in manifest:
            resolved = pip_resolves(staged, python, f"{wheel.name}=={wheel.version}", tmp_path / "t")
            assert resolved.returncode == 0, (python, resolved.stderr[-2000:])
    assert pip_resolves(staged, "3.14", f"pylibjpeg-rle=={rle}", tmp_path / "t").returncode != 0


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
@pytest.mark.parametrize("target", ["sync", "sync-code", "submit"])
def test_missing_credentials_say_what_to_set(tmp_path, work, target, cli_version):
    bare_home = tmp_path / "bare"
    (bare_home / ".config" / "kaggle").mkdir(parents=True)
    (bare_home / ".config" / "kaggle" / "access_token").write_text("a token the CLI never reads")
    result = make(target, tmp_path, bare_home, FAKE_KAGGLE_VERSION=cli_version)
    assert result.returncode != 0
    assert f"no Kaggle credentials that kaggle {cli_version} reads" in result.stderr
    for needed in ("kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        assert needed in result.stderr
    assert ("KAGGLE_API_TOKEN" in result.stderr) == (cli_version == "2.2.5")
    assert f"not read by this CLI: {bare_home / '.config' / 'kaggle' / 'access_token'}" in result.stderr
    assert calls(tmp_path) == []


def test_credentials_of_kaggle_auth_login_are_used(tmp_path, work):
    login_home = tmp_path / "login"
    (login_home / ".kaggle").mkdir(parents=True)
    login = {"refresh_token": "r", "access_token": "", "username": "oauth-user"}
    (login_home / ".kaggle" / "credentials.json").write_text(json.dumps(login))
    result = make("sync-code", tmp_path, login_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OAuth login from {login_home / '.kaggle' / 'credentials.json'} (user oauth-user)" in result.stderr
    assert uploads(tmp_path)[0]["metadata"]["id"] == f"oauth-user/{CODE_DATASET}"


def test_fake_cli_refuses_what_kaggle_would_drop_or_reject(tmp_path, home):
    staged = kaggle.stage_code("tester", tmp_path / "build")
    env = {**os.environ, "HOME": str(home), "FAKE_KAGGLE_LOG": str(tmp_path / "log")}
    fake = [sys.executable, str(FAKEBIN / "kaggle")]
    skip = subprocess.run([*fake, "datasets", "create", "-p", str(staged)], env=env, capture_output=True, text=True)
    assert skip.returncode == 1 and "sub-folders" in skip.stderr
    meta = json.loads((staged / "dataset-metadata.json").read_text())
    (staged / "dataset-metadata.json").write_text(json.dumps({**meta, "id": "{owner}/" + CODE_DATASET}))
    zipped = [*fake, "datasets", "version", "-p", str(staged), "-m", "x", "--dir-mode", "zip"]
    assert subprocess.run(zipped, env=env, capture_output=True).returncode == 1


def test_metadata_templates_name_no_owner():
    for template in [
        *(REPO / "datasets-metadata").glob("*/dataset-metadata.json"),
        REPO / "submission/kernel-metadata.json",
    ]:
        text = template.read_text()
        owners = {value.split("/")[0] for value in json.loads(text).get("dataset_sources", [])}
        assert json.loads(text).get("id", "").startswith("{owner}/") and owners <= {"{owner}"}, template
    assert kaggle.render({"a": ["{owner}/x", "{competition}"], "b": True}, "me") == {
        "a": ["me/x", COMPETITION_SLUG],
        "b": True,
    }


@pytest.mark.slow
def test_kernel_notebook_runs_in_a_simulated_kaggle(tiny_data, tmp_path):
    """Smoke-train on the tiny data, publish to a fake /kaggle/input, run the staged kernel as Kaggle would."""
    work = tmp_path / "work"
    env = {"DATA_DIR": str(tiny_data), "WORK_DIR": str(work), "PROFILE": "smoke", "FOLDS": "[0]", "WORKERS": "1"}
    env["PRESETS"] = '["sp1"]'
    for name in ("01_preprocess", "02_train_stage1", "03_train_stage2"):
        run_notebook(NOTEBOOKS / f"{name}.py", None, env, timeout=600, echo=False)

    root = tmp_path / "input"  # both mount layouts that Kaggle has used
    shutil.copytree(tiny_data, root / "competitions" / COMPETITION_SLUG)
    kaggle.stage_code("tester", root / "datasets" / "tester")
    kaggle.stage_weights("tester", work / "models", root)
    kernel = kaggle.stage_kernel("tester", tmp_path / "build")
    wheels = root / WHEELS_DATASET  # the image has timm at an accepted version; the probe it lacks
    build_wheel(wheels, "rsna-probe", "1.0")
    write_manifest(wheels, [Wheel("timm", importlib.metadata.version("timm"), ">=1.0.9"), Wheel("rsna-probe", "1.0")])

    working = tmp_path / "working"
    kaggle_env = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_INPUT_DIR": str(root), "KAGGLE_WORKING_DIR": str(working)}
    kaggle_env["TMPDIR"] = str(tmp_path / "tmp")  # where the kernel's offline installs go
    (tmp_path / "tmp").mkdir()
    assert not {"DATA_DIR", "WORK_DIR", "WEIGHTS_DIR"} & set(os.environ)
    executed = run_notebook(kernel / f"{KERNEL_SLUG}.ipynb", None, kaggle_env, timeout=600, echo=False)

    bootstrap = "".join(o.get("text", "") for o in executed.cells[1].outputs)
    assert str(root / "datasets" / "tester" / CODE_DATASET / "kaggle_utils") in bootstrap
    assert "installed offline: ['rsna-probe==1.0']" in bootstrap
    assert (tmp_path / "tmp" / "rsna24-site" / "rsna_probe" / "__init__.py").is_file()
    submission = pd.read_csv(working / "submission.csv")
    test_studies = pd.read_csv(tiny_data / "test_series_descriptions.csv")["study_id"].unique()
    assert len(submission) == 25 * len(test_studies)
    assert set(submission["row_id"]) == {f"{s}_{c}" for s in test_studies for c in LABEL_COLUMNS}
    assert not (working / "oof").exists()  # no CV inside a kernel


def test_paths_in_a_kernel_read_checkpoints_from_the_weights_dataset(tmp_path, monkeypatch):
    root = tmp_path / "input"
    competition = root / COMPETITION_SLUG
    competition.mkdir(parents=True)
    (competition / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    weights = root / "datasets" / "tester" / WEIGHTS_DATASET
    weights.mkdir(parents=True)
    for name in ("DATA_DIR", "WORK_DIR", "WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(root))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "working"))
    resolved = Paths.resolve()
    assert resolved.data_dir == competition and resolved.work_dir == tmp_path / "working"
    assert resolved.models_dir == weights and resolved.checkpoint("fo", 0, 42) == weights / "fo-f0-s42.pt"
    assert wheels_dataset() is None
    wheels = root / WHEELS_DATASET
    wheels.mkdir()
    write_manifest(wheels, [Wheel("timm", "1.0.31")])
    assert wheels_dataset() == wheels
    assert Paths(tmp_path / "d", tmp_path / "w").models_dir == tmp_path / "w" / "models"  # local runs: unchanged


def test_submit_waits_until_the_new_dataset_versions_are_ready(tmp_path, home, work):
    weights = f"tester/{WEIGHTS_DATASET}"
    states = json.dumps({weights: ["not_yet_persisted", "blobs_received", "ready"]})
    result = make("submit", tmp_path, home, FAKE_KAGGLE_EXISTING=OUR_DATASETS, FAKE_KAGGLE_DATASET_STATES=states)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"waiting for Kaggle to process {weights} (not_yet_persisted)" in result.stderr
    assert argvs(tmp_path)[: 3 + 2 + 1] == [["datasets", "status"]] * (3 + 2) + [["kernels", "push"]]


def test_submit_stops_at_once_on_a_failed_dataset_version(tmp_path, home, work):
    weights = f"tester/{WEIGHTS_DATASET}"
    states = json.dumps({weights: ["blobs_received", "failed"]})
    result = make("submit", tmp_path, home, FAKE_KAGGLE_EXISTING=OUR_DATASETS, FAKE_KAGGLE_DATASET_STATES=states)
    assert result.returncode != 0 and f"the newest version of {weights} is failed" in result.stderr
    assert argvs(tmp_path).count(["datasets", "status"]) == 3 + 1 and not uploads(tmp_path)


def test_submit_refuses_a_kernel_whose_datasets_do_not_exist(tmp_path, home, work):
    result = make("submit", tmp_path, home, FAKE_KAGGLE_EXISTING=f"tester/{CODE_DATASET}")
    assert result.returncode != 0 and "do not exist" in result.stderr and WEIGHTS_DATASET in result.stderr
    assert not uploads(tmp_path)


def test_a_cli_that_fails_is_shown_not_taken_for_a_missing_dataset(tmp_path, home, work):
    result = make("sync", tmp_path, home, FAKE_KAGGLE_CRASH="1")
    assert result.returncode != 0
    assert "No module named 'six'" in result.stderr and "--version" in result.stderr
    assert not uploads(tmp_path)  # no "create" that would then fail with "already exists"
    missing_cli = make("sync", tmp_path, home, "KAGGLE=no-such-kaggle-cli")
    assert missing_cli.returncode != 0 and "pip install" in missing_cli.stderr
