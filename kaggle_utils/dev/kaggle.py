"""Publish on Kaggle: stage the code, weights and wheels datasets and the submission kernel, then take them down the
road to a score with the Kaggle CLI (``kaggle_cli``), as the Makefile's Kaggle targets do.

Each thing is staged in ``build/kaggle/<slug>/`` with its metadata rendered for one owner (the committed templates
in ``datasets-metadata/`` and ``submission/`` say ``{owner}``). The owner comes from the caller (``make ...
KAGGLE_USER=``), else from the credentials the CLI will use (``kaggle_auth``). Every step that talks to Kaggle
first asks the CLI its version and finds the credentials that version reads, and says which.

    python -m kaggle_utils.dev.kaggle owner
    python -m kaggle_utils.dev.kaggle check                                 # the CLI's version and credentials
    python -m kaggle_utils.dev.kaggle stage code --owner me --build build/kaggle
    python -m kaggle_utils.dev.kaggle stage weights --owner me --models work/models
    python -m kaggle_utils.dev.kaggle stage wheels --owner me --packages timm pydicom --downloads build/kaggle/downloads
    python -m kaggle_utils.dev.kaggle pins timm pydicom                     # as installed here
    python -m kaggle_utils.dev.kaggle publish code --message "abc1234 fix"  # stage, then create or add a version
    python -m kaggle_utils.dev.kaggle publish weights --delete-old-versions
    python -m kaggle_utils.dev.kaggle wait-ready build/kaggle/rsna24-infer/kernel-metadata.json
    python -m kaggle_utils.dev.kaggle kernel-push          # once our datasets are ready: notebook 04 as the kernel
    python -m kaggle_utils.dev.kaggle kernel-follow        # its run, until it completes or fails
    python -m kaggle_utils.dev.kaggle kernel-output        # its log and submission.csv
    python -m kaggle_utils.dev.kaggle competition-submit   # the pushed version (or --version N)
    python -m kaggle_utils.dev.kaggle submit --to-competition   # all of the above in turn
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jupytext
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kaggle_utils.core.paths import (
    BLEND_FILE,
    CODE_DATASET,
    COMPETITION_SLUG,
    DEFAULT_WORK_DIR,
    KERNEL_SLUG,
    REPO_ROOT,
    SUBMISSION_CSV,
    WEIGHTS_DATASET,
    WHEELS_DATASET,
    finished_checkpoints,
)
from kaggle_utils.core.wheels import Wheel, write_manifest
from kaggle_utils.dev import kaggle_auth
from kaggle_utils.dev.kaggle_cli import (
    KERNEL_COMPLETE,
    KaggleSetupError,
    cli_version,
    fetch_output,
    follow_kernel,
    log_tail,
    publish_dataset,
    push_kernel,
    submit_version,
    wait_until_ready,
)

METADATA_DIR = REPO_ROOT / "datasets-metadata"
SUBMISSION_DIR = REPO_ROOT / "submission"
KERNEL_SOURCE = REPO_ROOT / "notebooks" / "04_inference.py"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "kaggle"
DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
# The CLI uploads these unless told otherwise (spec: only .git and caches are ignored by default).
JUNK = ("__pycache__", "*.pyc", ".ipynb_checkpoints", ".DS_Store")
DEV_PACKAGE = "dev"  # kaggle_utils/dev: the generator, benchmarks, the notebook runner and this module
DISTRIBUTION = "kaggle-utils-rsna24"  # pyproject's project name: its metadata holds the accepted versions
PUSH_RECORD = "kernel-push.json"  # in the build folder: the kernel and the version its last push made


# --- credentials and owner ---------------------------------------------------------------------------------------
def require_credentials(cli: str) -> kaggle_auth.Credentials:
    """The credentials the installed CLI will use, said on stderr; a failure saying what to set when it has none."""
    version = cli_version(cli)
    found = kaggle_auth.find_credentials(os.environ, version)
    if found is None:
        raise KaggleSetupError(kaggle_auth.missing_message(os.environ, version))
    print(f"kaggle {version}: {found.describe()}", file=sys.stderr)
    return found


def kaggle_user() -> str:
    """The owner of our datasets and kernel, from the credentials (``make ... KAGGLE_USER=`` overrides it)."""
    owner = kaggle_auth.owner_name()
    if not owner:
        raise KaggleSetupError(
            "Kaggle user unknown: pass KAGGLE_USER=<name> to make, or set KAGGLE_USERNAME "
            "(an access token alone does not name its user)"
        )
    return owner


# --- metadata ----------------------------------------------------------------------------------------
def render(template: Any, owner: str) -> Any:
    """The template with ``{owner}`` and ``{competition}`` filled in, in every string it holds."""
    if isinstance(template, dict):
        return {key: render(value, owner) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, owner) for value in template]
    if isinstance(template, str):
        return template.replace("{owner}", owner).replace("{competition}", COMPETITION_SLUG)
    return template


def write_metadata(template: Path, out_dir: Path, owner: str) -> dict:
    """Render a committed metadata template into the staging folder under the same file name."""
    if not owner or "/" in owner:
        raise KaggleSetupError(f"invalid Kaggle user {owner!r}: pass KAGGLE_USER=<name>")
    metadata = render(json.loads(template.read_text()), owner)
    (out_dir / template.name).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def clean(folder: Path) -> None:
    """Delete caches and editor files that the CLI would otherwise upload."""
    for pattern in JUNK:
        for path in sorted(folder.rglob(pattern), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def fresh_dir(folder: Path) -> Path:
    """An empty staging folder: nothing of an earlier staging may reach a new version."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# --- what we publish ---------------------------------------------------------------------------------
def stage_code(owner: str, build: Path = DEFAULT_BUILD_DIR) -> Path:
    """``build/<code slug>/kaggle_utils/`` (the package without ``dev/``, which the kernel never imports, and no
    caches) plus its metadata."""
    out = fresh_dir(build / CODE_DATASET)
    ignore = shutil.ignore_patterns(*JUNK, DEV_PACKAGE)
    shutil.copytree(REPO_ROOT / "kaggle_utils", out / "kaggle_utils", ignore=ignore)
    write_metadata(METADATA_DIR / CODE_DATASET / DATASET_METADATA, out, owner)
    clean(out)
    return out


def stage_weights(owner: str, models: Path = DEFAULT_WORK_DIR / "models", build: Path = DEFAULT_BUILD_DIR) -> Path:
    """``build/<weights slug>/``: every finished checkpoint of ``models`` in half precision, with its JSON sidecar,
    and the blend the CV fit (``blend.json``; logs, plots and an interrupted run's resume state stay). Half precision
    halves the upload (the full ensemble: 8.5 GB in fp32) and what the kernel reads; the sizes go to stderr (stdout
    is the folder, for the Makefile)."""
    from kaggle_utils.models.checkpoints import half_precision_copy  # here: torch and timm take seconds to import

    checkpoints = finished_checkpoints(models)
    if not checkpoints:
        raise KaggleSetupError(f"no checkpoints (*.pt) in {models}: train first, or pass WORK_DIR=<folder>")
    missing = [c for c in checkpoints if not c.with_suffix(".json").is_file()]
    if missing:
        names = ", ".join(c.name for c in missing)
        raise KaggleSetupError(f"{names} in {models}: no JSON sidecar beside them, so inference cannot rebuild them")
    out = fresh_dir(build / WEIGHTS_DATASET)
    full = half = 0
    for checkpoint in checkpoints:
        sizes = half_precision_copy(checkpoint, out / checkpoint.name)
        full, half = full + sizes[0], half + sizes[1]
        sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
        (out / checkpoint.with_suffix(".json").name).write_text(
            json.dumps({**sidecar, "stored_as": "float16"}, indent=1)
        )
    blend = models / BLEND_FILE
    if blend.is_file():
        shutil.copyfile(blend, out / BLEND_FILE)
    else:
        print(f"weights: no {blend} (04's CV fits it): the kernel weighs sagittal and axial alike", file=sys.stderr)
    write_metadata(METADATA_DIR / WEIGHTS_DATASET / DATASET_METADATA, out, owner)
    print(
        f"weights: {len(checkpoints)} checkpoints, {full / 1e9:.2f} GB -> {half / 1e9:.2f} GB in fp16", file=sys.stderr
    )
    return out


def project_requirements() -> dict[str, str]:
    """The version range the project accepts per dependency, as its installed metadata declares it."""
    accepted = {}
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        if requirement.marker is None:  # extras such as [dev] carry a marker
            accepted[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return accepted


def pinned(packages: list[str]) -> list[Wheel]:
    """Each package at the version this environment has (the one the tests ran), with the project's range."""
    accepted = project_requirements()
    wheels = []
    for package in packages:
        name = canonicalize_name(package)
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise KaggleSetupError(f"{package} is not installed here, so there is no tested version to pin") from error
        wheels.append(Wheel(name, version, accepted.get(name, "")))
    return wheels


def stage_wheels(owner: str, packages: list[str], downloads: Path, build: Path = DEFAULT_BUILD_DIR) -> Path:
    """``build/<wheels slug>/``: every downloaded wheel of each package at its pinned version (one per Python
    and platform tag for compiled ones, one for pure ones) and ``wheels.json``, which the kernel installs from."""
    if not packages:
        raise KaggleSetupError("no packages given for the wheels dataset (WHEELS=...)")
    out = fresh_dir(build / WHEELS_DATASET)
    wheels = pinned(packages)
    for wheel in wheels:
        files = wheel.files(downloads)
        if not files:
            raise KaggleSetupError(f"no wheel of {wheel.name}=={wheel.version} in {downloads}: `make wheels` first")
        for name in files:
            shutil.copy2(Path(downloads) / name, out / name)
    write_manifest(out, wheels)
    write_metadata(METADATA_DIR / WHEELS_DATASET / DATASET_METADATA, out, owner)
    return out


def stage_kernel(owner: str, build: Path = DEFAULT_BUILD_DIR, source: Path = KERNEL_SOURCE) -> Path:
    """``build/<kernel slug>/``: notebook 04 as ``.ipynb`` (no outputs) and the rendered kernel metadata."""
    out = fresh_dir(build / KERNEL_SLUG)
    metadata = write_metadata(SUBMISSION_DIR / KERNEL_METADATA, out, owner)
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(notebook, out / metadata["code_file"], fmt="ipynb")
    return out


# --- the road to a score -----------------------------------------------------------------------------------------
def kernel_id(owner: str) -> str:
    return f"{owner}/{KERNEL_SLUG}"


def kernel_datasets(kernel_metadata: Path) -> list[str]:
    """The datasets a staged kernel mounts, from its rendered metadata."""
    return list(json.loads(Path(kernel_metadata).read_text())["dataset_sources"])


def kernel_push(owner: str, build: Path, cli: str, ready_timeout: float, poll: float) -> int | None:
    """Stage notebook 04, wait until the datasets it mounts are ready, push it and record the version it made."""
    folder = stage_kernel(owner, build)
    wait_until_ready(kernel_datasets(folder / KERNEL_METADATA), cli, ready_timeout, poll)
    version = push_kernel(kernel_id(owner), folder, cli)
    (build / PUSH_RECORD).write_text(json.dumps({"kernel": kernel_id(owner), "version": version}) + "\n")
    return version


def pushed_version(owner: str, build: Path) -> int:
    """The version the last ``kernel-push`` from here made."""
    record = build / PUSH_RECORD
    pushed = json.loads(record.read_text()) if record.is_file() else {}
    if pushed.get("kernel") != kernel_id(owner) or not pushed.get("version"):
        raise KaggleSetupError(
            f"no pushed version of kernel {kernel_id(owner)} in {record}: pass KERNEL_VERSION=<N> (see its page)"
        )
    return int(pushed["version"])


def kernel_output(owner: str, cli: str, output: Path) -> Path:
    """Download the log and files of the kernel's latest run; the path of its ``submission.csv``."""
    kernel = kernel_id(owner)
    files = fetch_output(kernel, cli, output)
    log, submission = output / f"{KERNEL_SLUG}.log", output / SUBMISSION_CSV
    print(f"kernel {kernel}: {', '.join(f.name for f in files) or 'no files'} in {output}", file=sys.stderr)
    if not submission.is_file():
        tail = log_tail(log) if log.is_file() else "(no log either)"
        raise KaggleSetupError(f"kernel {kernel} wrote no {SUBMISSION_CSV}; the end of its log {log}:\n{tail}")
    rows = len(submission.read_text().splitlines()) - 1
    print(f"{submission}: {rows} rows", file=sys.stderr)
    return submission


def kernel_follow(owner: str, cli: str, output: Path, run_timeout: float, poll: float) -> None:
    """Follow the kernel's latest run until it ends; when it fails, fetch and show the end of its log."""
    kernel = kernel_id(owner)
    state, message = follow_kernel(kernel, cli, run_timeout, poll)
    if state == KERNEL_COMPLETE:
        return
    fetch_output(kernel, cli, output)
    log = output / f"{KERNEL_SLUG}.log"
    tail = log_tail(log) if log.is_file() else "(no log)"
    reason = f': "{message}"' if message else ""
    raise KaggleSetupError(f"kernel {kernel} ended {state}{reason}; the end of its log {log}:\n{tail}")


def competition_submit(owner: str, build: Path, cli: str, version: int | None, message: str) -> None:
    """Submit a version of the kernel (default: the one pushed from here) to the competition."""
    version = version or pushed_version(owner, build)
    message = message or f"{KERNEL_SLUG} version {version}"
    submit_version(kernel_id(owner), version, COMPETITION_SLUG, SUBMISSION_CSV, message, cli)


# --- command line ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    kaggle = argparse.ArgumentParser(add_help=False)  # what every step that stages or talks to Kaggle takes
    kaggle.add_argument("--owner", default="", help="Kaggle user (default: from the credentials)")
    kaggle.add_argument("--build", type=Path, default=DEFAULT_BUILD_DIR, help="staging root")
    kaggle.add_argument("--cli", default="kaggle", help="the Kaggle CLI command")
    staging = argparse.ArgumentParser(add_help=False)
    staging.add_argument("--models", type=Path, default=DEFAULT_WORK_DIR / "models", help="checkpoints (weights)")
    staging.add_argument("--packages", nargs="*", default=[], help="requirements (wheels)")
    staging.add_argument("--downloads", type=Path, default=DEFAULT_BUILD_DIR / "downloads", help="pip download dir")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--poll", type=float, default=30, help="seconds between questions to Kaggle")
    waiting.add_argument("--ready-timeout", type=float, default=1800, help="seconds to wait for our datasets")
    waiting.add_argument("--run-timeout", type=float, default=43200, help="seconds to follow the kernel's run")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--output", type=Path, default=DEFAULT_BUILD_DIR / "output", help="the kernel's files go here")
    submitting = argparse.ArgumentParser(add_help=False)
    submitting.add_argument("--version", type=int, default=None, help="kernel version (default: the one pushed)")
    submitting.add_argument("--message", default="", help="submission description")

    commands.add_parser("owner", help="print the Kaggle user our datasets belong to")
    commands.add_parser("check", parents=[kaggle], help="the CLI's version and the credentials it will use")
    stage = commands.add_parser("stage", parents=[kaggle, staging], help="stage one thing; prints its folder")
    stage.add_argument("what", choices=["code", "weights", "wheels", "kernel"])
    pins = commands.add_parser("pins", help="print name==version of each package as installed here")
    pins.add_argument("packages", nargs="+")
    publish = commands.add_parser("publish", parents=[kaggle, staging], help="stage a dataset, create or version it")
    publish.add_argument("what", choices=["code", "weights", "wheels"])
    publish.add_argument("--message", default="", help="the version's notes")
    publish.add_argument("--delete-old-versions", action="store_true", help="delete the dataset's older versions")
    wait = commands.add_parser(
        "wait-ready", parents=[kaggle, waiting], help="until a staged kernel's datasets are ready"
    )
    wait.add_argument("kernel_metadata", type=Path, help="the staged kernel-metadata.json")
    commands.add_parser("kernel-push", parents=[kaggle, waiting], help="push notebook 04 once our datasets are ready")
    commands.add_parser("kernel-follow", parents=[kaggle, waiting, output], help="follow the kernel's latest run")
    commands.add_parser("kernel-output", parents=[kaggle, output], help="fetch its log and submission.csv")
    commands.add_parser("competition-submit", parents=[kaggle, submitting], help="submit a kernel version")
    road = commands.add_parser("submit", parents=[kaggle, waiting, output, submitting], help="push, follow, output")
    road.add_argument("--to-competition", action="store_true", help="then submit the pushed version")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except KaggleSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _stage(what: str, owner: str, args: argparse.Namespace) -> Path:
    staged = {
        "code": lambda: stage_code(owner, args.build),
        "weights": lambda: stage_weights(owner, args.models, args.build),
        "wheels": lambda: stage_wheels(owner, args.packages, args.downloads, args.build),
        "kernel": lambda: stage_kernel(owner, args.build),
    }
    return staged[what]()


def _run(args: argparse.Namespace) -> int:
    if args.command == "owner":
        print(kaggle_user())
        return 0
    if args.command == "pins":
        print(" ".join(f"{w.name}=={w.version}" for w in pinned(args.packages)))
        return 0
    if args.command == "stage":
        print(_stage(args.what, args.owner or kaggle_user(), args))
        return 0
    require_credentials(args.cli)  # every other command talks to Kaggle
    if args.command == "check":
        return 0
    owner = args.owner or kaggle_user()
    if args.command == "publish":
        folder = _stage(args.what, owner, args)
        publish_dataset(f"{owner}/{folder.name}", folder, args.message, args.cli, args.delete_old_versions)
    elif args.command == "wait-ready":
        wait_until_ready(kernel_datasets(args.kernel_metadata), args.cli, args.ready_timeout, args.poll)
    elif args.command == "kernel-push":
        kernel_push(owner, args.build, args.cli, args.ready_timeout, args.poll)
    elif args.command == "kernel-follow":
        kernel_follow(owner, args.cli, args.output, args.run_timeout, args.poll)
    elif args.command == "kernel-output":
        kernel_output(owner, args.cli, args.output)
    elif args.command == "competition-submit":
        competition_submit(owner, args.build, args.cli, args.version, args.message)
    elif args.command == "submit":
        version = kernel_push(owner, args.build, args.cli, args.ready_timeout, args.poll)
        kernel_follow(owner, args.cli, args.output, args.run_timeout, args.poll)
        kernel_output(owner, args.cli, args.output)
        if args.to_competition:
            competition_submit(owner, args.build, args.cli, args.version or version, args.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
