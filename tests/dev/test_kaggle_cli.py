"""Each step of kaggle_utils.dev.kaggle_cli against the fake CLI (tests/dev/fakebin/kaggle) behaving as kaggle 2.2.5
and as 1.7.4.5: a step fails, naming the dataset or kernel and quoting the CLI, unless the CLI said it worked, even
when the CLI exits 0."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kaggle_utils.dev import kaggle_cli
from kaggle_utils.dev.kaggle_cli import CliRun, KaggleSetupError

FAKEBIN = Path(__file__).parent / "fakebin"
FAKE = f"{sys.executable} {FAKEBIN / 'kaggle'}"
CLI_VERSIONS = ("2.2.5", "1.7.4.5")
DATASET = "tester/rsna24-weights"
KERNEL = "tester/rsna24-infer"
COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"


@pytest.fixture(params=CLI_VERSIONS)
def fake(request, tmp_path: Path, monkeypatch) -> Path:
    """The fake CLI as one version, with a user's API key and a fresh server log (returned)."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "tester", "key": "k"}))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FAKE_KAGGLE_VERSION", request.param)
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(tmp_path / "kaggle.log"))
    return tmp_path / "kaggle.log"


def calls(log: Path, *argv_head: str) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [c for c in map(json.loads, lines) if c["argv"][: len(argv_head)] == list(argv_head)]


def staged_dataset(folder: Path, dataset: str = DATASET) -> Path:
    folder.mkdir(parents=True)
    (folder / "dataset-metadata.json").write_text(
        json.dumps({"title": "rsna24 weights", "id": dataset, "licenses": [{"name": "apache-2.0"}]})
    )
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def staged_kernel(folder: Path, sources: list[str]) -> Path:
    folder.mkdir(parents=True)
    metadata = {"id": KERNEL, "title": "rsna24 infer", "code_file": "k.ipynb", "language": "python"}
    metadata |= {"kernel_type": "notebook", "dataset_sources": sources, "competition_sources": [COMPETITION]}
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    (folder / "k.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return folder


def test_the_version_is_read_from_either_cli(fake):
    assert kaggle_cli.cli_version(FAKE) in CLI_VERSIONS


def test_a_missing_dataset_is_told_apart_from_a_failing_cli(fake, monkeypatch):
    assert kaggle_cli.dataset_status(DATASET, FAKE) == kaggle_cli.MISSING  # "Not found ..." or "404 Client Error"
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    assert kaggle_cli.dataset_status(DATASET, FAKE) == "ready"
    monkeypatch.setenv("FAKE_KAGGLE_CRASH", "1")
    with pytest.raises(KaggleSetupError, match=f"status of dataset {DATASET}.*No module named 'six'"):
        kaggle_cli.dataset_status(DATASET, FAKE)


def test_publishing_creates_then_versions(fake, tmp_path):
    folder = staged_dataset(tmp_path / "staged")
    assert kaggle_cli.publish_dataset(DATASET, folder, "abc1234", FAKE) == "create"
    assert kaggle_cli.publish_dataset(DATASET, folder, "abc1234", FAKE, delete_old_versions=True) == "version"
    (create,) = calls(fake, "datasets", "create")
    (version,) = calls(fake, "datasets", "version")
    assert create["argv"][-2:] == ["--dir-mode", "zip"] and "--delete-old-versions" in version["argv"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_refused_upload_fails_though_the_cli_exits_0(fake, tmp_path, monkeypatch, existing):
    folder = staged_dataset(tmp_path / "staged")
    if existing:
        monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    monkeypatch.setenv("FAKE_KAGGLE_REFUSE", json.dumps({"create": "Upload quota exceeded", "version": "Too big"}))
    error = "Dataset version creation error: Too big" if existing else "Dataset creation error: Upload quota exceeded"
    with pytest.raises(KaggleSetupError, match=f'{DATASET}: the CLI said "{error}" \\(exit 0\\)'):
        kaggle_cli.publish_dataset(DATASET, folder, "abc1234", FAKE)


def test_creating_a_dataset_whose_slug_is_in_use_fails(fake, tmp_path, monkeypatch):
    """A status check that called a dataset missing when it is not (wording not recognised): the create is
    refused, and that refusal is seen."""
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    run = kaggle_cli.run_cli(FAKE, "datasets", "create", "-p", staged_dataset(tmp_path / "s"), "--dir-mode", "zip")
    assert run.returncode == 0
    with pytest.raises(KaggleSetupError, match="already in use by a dataset"):
        kaggle_cli.expect(run, kaggle_cli.DATASET_CREATED, f"creating dataset {DATASET}")


@pytest.mark.parametrize("state", kaggle_cli.DATASET_FAILED)
def test_waiting_stops_at_once_on_a_failed_or_deleted_version(fake, monkeypatch, state):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    monkeypatch.setenv("FAKE_KAGGLE_DATASET_STATES", json.dumps({DATASET: [state]}))
    with pytest.raises(KaggleSetupError, match=f"newest version of {DATASET} is {state}"):
        kaggle_cli.wait_until_ready([DATASET], FAKE, timeout=0, poll=0)  # fails at once, and says why
    assert len(calls(fake, "datasets", "status")) == 1


def test_waiting_goes_on_while_kaggle_processes(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    monkeypatch.setenv(
        "FAKE_KAGGLE_DATASET_STATES", json.dumps({DATASET: ["not_yet_persisted", "blobs_received", "ready"]})
    )
    kaggle_cli.wait_until_ready([DATASET], FAKE, poll=0)
    assert f"waiting for Kaggle to process {DATASET} (blobs_received)" in capsys.readouterr().err
    assert len(calls(fake, "datasets", "status")) == 3


def test_a_push_tells_its_version_and_a_refused_push_fails(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    folder = staged_kernel(tmp_path / "kernel", [DATASET])
    assert kaggle_cli.push_kernel(KERNEL, folder, FAKE) == 1
    assert kaggle_cli.push_kernel(KERNEL, folder, FAKE) == 2
    monkeypatch.setenv("FAKE_KAGGLE_REFUSE", json.dumps({"push": "Notebook exceeds the size limit"}))
    with pytest.raises(KaggleSetupError, match=f'kernel {KERNEL}: the CLI said "Kernel push error: Notebook exceeds'):
        kaggle_cli.push_kernel(KERNEL, folder, FAKE)


def test_a_push_that_leaves_a_source_out_fails(fake, tmp_path):
    folder = staged_kernel(tmp_path / "kernel", [DATASET])  # the dataset does not exist: Kaggle leaves it out
    with pytest.raises(KaggleSetupError, match=f"{KERNEL} was pushed, but its run will miss inputs.*{DATASET}"):
        kaggle_cli.push_kernel(KERNEL, folder, FAKE)


def test_following_a_run_until_it_ends(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    kaggle_cli.push_kernel(KERNEL, staged_kernel(tmp_path / "kernel", [DATASET]), FAKE)
    monkeypatch.setenv("FAKE_KAGGLE_KERNEL_STATES", json.dumps(["queued", "running", "error"]))
    monkeypatch.setenv("FAKE_KAGGLE_FAILURE", "Your notebook tried to allocate more memory than is available.")
    state, message = kaggle_cli.follow_kernel(KERNEL, FAKE, poll=0)
    assert (state, message) == ("error", "Your notebook tried to allocate more memory than is available.")
    progress = capsys.readouterr().err
    assert f"kernel {KERNEL}: queued" in progress and f"kernel {KERNEL}: running" in progress
    files = kaggle_cli.fetch_output(KERNEL, FAKE, tmp_path / "out")
    assert [f.name for f in files] == ["rsna24-infer.log"]  # no submission.csv from a failed run
    assert kaggle_cli.log_tail(files[0]).endswith("RuntimeError: CUDA out of memory")


def test_the_status_of_a_kernel_never_pushed_fails(fake):
    with pytest.raises(KaggleSetupError, match=f"status of kernel {KERNEL}: the CLI said .*(not found|404)"):
        kaggle_cli.kernel_status(KERNEL, FAKE)


def test_submitting_a_version(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    kaggle_cli.push_kernel(KERNEL, staged_kernel(tmp_path / "kernel", [DATASET]), FAKE)
    kaggle_cli.submit_version(KERNEL, 1, COMPETITION, "submission.csv", "abc1234", FAKE)
    (submit,) = calls(fake, "competitions", "submit")
    assert submit["argv"][2:] == [COMPETITION, "-k", KERNEL, "-v", "1", "-f", "submission.csv", "-m", "abc1234"]
    with pytest.raises(KaggleSetupError, match=f"version 2 of kernel {KERNEL} to {COMPETITION}: .*(not find|404)"):
        kaggle_cli.submit_version(KERNEL, 2, COMPETITION, "submission.csv", "abc1234", FAKE)
    monkeypatch.setenv("FAKE_KAGGLE_REFUSE", json.dumps({"submit": "Submission not allowed"}))
    with pytest.raises(KaggleSetupError, match="the CLI said .*(Submission not allowed|400 Client Error)"):
        kaggle_cli.submit_version(KERNEL, 1, COMPETITION, "submission.csv", "abc1234", FAKE)


# What the real CLIs printed against a local stand-in for Kaggle's server (kaggle 2.2.5 and 1.7.4.5).
REAL_OUTPUTS = {
    "2.2.5 not found": (
        "Not found\n\nThe resource was not found. Check the spelling of the reference you passed.\n"
        "References are usually '<owner>/<slug>', which you can find in the resource's URL.\n"
        "To search for one, try 'kaggle search <query>'.\n",
        "Not found The resource was not found. Check the spelling of the reference you passed.",
    ),
    "1.7.4.5 not found": (
        "404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/tester/rsna24-weights\n",
        "404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/tester/rsna24-weights",
    ),
    "1.7.4.5 without kaggle.json": (
        'Traceback (most recent call last):\n  File "/v/bin/kaggle", line 5, in <module>\n'
        "    from kaggle.cli import main\n"
        '  File "/v/lib/python3.11/site-packages/kaggle/__init__.py", line 6, in <module>\n    api.authenticate()\n'
        '  File "/v/lib/python3.11/site-packages/kaggle/api/kaggle_api_extended.py", line 434, in authenticate\n'
        "    raise IOError('Could not find {}. Make sure it\\'s located in'\n"
        "OSError: Could not find kaggle.json. Make sure it's located in /h/.config/kaggle. Or use the environment "
        "method. See setup instructions at https://github.com/Kaggle/kaggle-api/\n",
        "OSError: Could not find kaggle.json. Make sure it's located in /h/.config/kaggle. Or use the environment "
        "method. See setup instructions at https://github.com/Kaggle/kaggle-api/",
    ),
    "2.2.5 refused upload": (
        "Starting upload for file sub.zip\n  0%|          | 0.00/112 [00:00<?, ?B/s]\r100%|##| 112/112\n"
        "Upload successful: sub.zip (112B)\nDataset creation error: Upload quota exceeded\n",
        "Dataset creation error: Upload quota exceeded",
    ),
}


@pytest.mark.parametrize("case", REAL_OUTPUTS)
def test_the_quoted_line_of_real_cli_outputs(case):
    output, quoted = REAL_OUTPUTS[case]
    assert CliRun(["kaggle"], 1, output).telling_line() == quoted


@pytest.mark.parametrize("case", ["2.2.5 not found", "1.7.4.5 not found"])
def test_both_wordings_of_not_found_mean_missing(case):
    assert kaggle_cli.NOT_FOUND.search(REAL_OUTPUTS[case][0])
    assert not kaggle_cli.NOT_FOUND.search(REAL_OUTPUTS["2.2.5 refused upload"][0])


def test_a_submission_without_a_known_success_line_says_where_to_look(tmp_path):
    """Exit 0 and an unknown wording: not taken for a success, but not called a sure failure either."""
    cli = f"{sys.executable} -c 'print(\"Your submission is being processed\")'"
    with pytest.raises(KaggleSetupError, match="being processed.*exit 0.*competition's submissions page"):
        kaggle_cli.submit_version(KERNEL, 1, COMPETITION, "submission.csv", "abc1234", cli)
