"""Stage what we publish on Kaggle: the code, weights and wheels datasets and the submission kernel.

Each goes to ``build/kaggle/<slug>/`` with its metadata rendered for one owner (the committed templates in
``datasets-metadata/`` and ``submission/`` say ``{owner}``), so the Makefile only has to call the Kaggle CLI
on a ready folder. The owner comes from the caller (``make ... KAGGLE_USER=``), else the ``username`` of the
user's ``kaggle.json``, else ``KAGGLE_USERNAME``.

    python -m kaggle_utils.dev.kaggle owner
    python -m kaggle_utils.dev.kaggle stage code --owner me --build build/kaggle
    python -m kaggle_utils.dev.kaggle stage weights --owner me --models work/models
    python -m kaggle_utils.dev.kaggle stage wheels --owner me --packages timm pydicom --downloads build/kaggle/downloads
    python -m kaggle_utils.dev.kaggle pins timm pydicom                     # as installed here
    python -m kaggle_utils.dev.kaggle publish-action me/rsna24-weights      # create or version
    python -m kaggle_utils.dev.kaggle wait-ready build/kaggle/rsna24-infer/kernel-metadata.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jupytext
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kaggle_utils.checkpoints import half_precision_copy
from kaggle_utils.paths import (
    BLEND_FILE,
    CODE_DATASET,
    COMPETITION_SLUG,
    DEFAULT_WORK_DIR,
    KERNEL_SLUG,
    REPO_ROOT,
    WEIGHTS_DATASET,
    WHEELS_DATASET,
    finished_checkpoints,
)
from kaggle_utils.wheels import Wheel, write_manifest

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


class KaggleSetupError(RuntimeError):
    """Something needed to publish is missing (credentials, owner, checkpoints); the message says what."""


# --- credentials and owner ---------------------------------------------------------------------------
def config_folders(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where the CLI looks for its credential files: ``$KAGGLE_CONFIG_DIR``, ``~/.kaggle``, ``~/.config/kaggle``."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    folders = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    return [*folders, home / ".kaggle", home / ".config" / "kaggle"]


def kaggle_json(env: Mapping[str, str] | None = None) -> Path | None:
    """The user's ``kaggle.json`` in the first of the CLI's folders that has one."""
    return next((f / "kaggle.json" for f in config_folders(env) if (f / "kaggle.json").is_file()), None)


def has_credentials(env: Mapping[str, str] | None = None) -> bool:
    """True when the CLI has something to authenticate with: a token, a key pair or ``kaggle.json``."""
    env = os.environ if env is None else env
    names = ("access_token", "access_token.txt")
    token_file = any((folder / name).is_file() for folder in config_folders(env) for name in names)
    key_pair = bool(env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"))
    return bool(env.get("KAGGLE_API_TOKEN")) or token_file or key_pair or kaggle_json(env) is not None


def require_credentials(env: Mapping[str, str] | None = None) -> None:
    """Fail early with what to set, instead of the CLI's message after it has started."""
    if not has_credentials(env):
        raise KaggleSetupError(
            "no Kaggle credentials: put your API key in ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json), "
            "or set KAGGLE_USERNAME and KAGGLE_KEY, or set KAGGLE_API_TOKEN "
            "(https://www.kaggle.com/settings -> API)"
        )


def kaggle_user(env: Mapping[str, str] | None = None) -> str:
    """The owner of our datasets: ``username`` in ``kaggle.json``, else ``KAGGLE_USERNAME``."""
    env = os.environ if env is None else env
    found = kaggle_json(env)
    if found is not None:
        username = json.loads(found.read_text()).get("username")
        if username:
            return str(username)
    if env.get("KAGGLE_USERNAME"):
        return env["KAGGLE_USERNAME"]
    raise KaggleSetupError(
        "Kaggle user unknown: pass KAGGLE_USER=<name> to make, or set KAGGLE_USERNAME, or add a "
        "~/.kaggle/kaggle.json with your username (an access token alone does not name its user)"
    )


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


# --- dataset status ----------------------------------------------------------------------------------
def dataset_status(dataset_id: str, cli: str = "kaggle") -> str:
    """What ``kaggle datasets status`` says of ``dataset_id`` (``ready``, ``pending``, ...), or ``missing`` when
    Kaggle has no such dataset. Any other failure (no CLI, a CLI that crashes, no network) raises with its output,
    so that it is never mistaken for a dataset still to be created."""
    command = [*shlex.split(cli), "datasets", "status", dataset_id]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as error:
        raise KaggleSetupError(f"the Kaggle CLI {cli!r} was not found: `pip install kaggle six`") from error
    except subprocess.TimeoutExpired as error:
        raise KaggleSetupError(f"`{shlex.join(command)}` gave no answer in 5 minutes (no network?)") from error
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1].strip().lower()
    if "404" in output or "Not Found" in output:
        return "missing"
    raise KaggleSetupError(f"`{shlex.join(command)}` failed (exit {done.returncode}): {output[-800:] or 'no output'}")


def kernel_datasets(kernel_metadata: Path) -> list[str]:
    """The datasets a staged kernel mounts, from its rendered metadata."""
    return list(json.loads(Path(kernel_metadata).read_text())["dataset_sources"])


def wait_until_ready(dataset_ids: list[str], cli: str = "kaggle", timeout: float = 1800, poll: float = 30) -> None:
    """Return once every dataset's newest version is ready, saying which it waits for: a kernel pushed earlier
    would mount the previous versions."""
    deadline = time.monotonic() + timeout
    waiting = list(dataset_ids)
    while True:
        states = {dataset: dataset_status(dataset, cli) for dataset in waiting}
        missing = [d for d, state in states.items() if state == "missing"]
        if missing:
            raise KaggleSetupError(
                f"the kernel mounts datasets that do not exist yet: {missing} (make sync, make wheels)"
            )
        waiting = [d for d, state in states.items() if state != "ready"]
        if not waiting:
            print(f"datasets ready: {', '.join(dataset_ids)}", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            raise KaggleSetupError(f"still not ready after {timeout:.0f} s: {states}")
        print(f"waiting for Kaggle to process {', '.join(f'{d} ({states[d]})' for d in waiting)}", file=sys.stderr)
        time.sleep(poll)


# --- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("owner", help="print the Kaggle user our datasets belong to")
    commands.add_parser("check", help="fail with what to set when no Kaggle credentials are found")
    stage = commands.add_parser("stage", help="stage one thing to publish; prints its folder")
    stage.add_argument("what", choices=["code", "weights", "wheels", "kernel"])
    stage.add_argument("--owner", default="", help="Kaggle user (default: from the credentials)")
    stage.add_argument("--build", type=Path, default=DEFAULT_BUILD_DIR, help="staging root")
    stage.add_argument("--models", type=Path, default=DEFAULT_WORK_DIR / "models", help="checkpoints (weights)")
    stage.add_argument("--packages", nargs="*", default=[], help="requirements (wheels)")
    stage.add_argument("--downloads", type=Path, default=DEFAULT_BUILD_DIR / "downloads", help="pip download dir")
    pins = commands.add_parser("pins", help="print name==version of each package as installed here")
    pins.add_argument("packages", nargs="+")
    action = commands.add_parser("publish-action", help="print `create` or `version` for a dataset id")
    action.add_argument("dataset")
    wait = commands.add_parser("wait-ready", help="wait until the datasets a staged kernel mounts are ready")
    wait.add_argument("kernel_metadata", type=Path, help="the staged kernel-metadata.json")
    wait.add_argument("--timeout", type=float, default=1800)
    wait.add_argument("--poll", type=float, default=30)
    for command in (action, wait):
        command.add_argument("--cli", default="kaggle", help="the Kaggle CLI command")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KaggleSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "owner":
        print(kaggle_user())
        return 0
    if args.command == "check":
        require_credentials()
        return 0
    if args.command == "pins":
        print(" ".join(f"{w.name}=={w.version}" for w in pinned(args.packages)))
        return 0
    if args.command == "publish-action":
        print("create" if dataset_status(args.dataset, args.cli) == "missing" else "version")
        return 0
    if args.command == "wait-ready":
        wait_until_ready(kernel_datasets(args.kernel_metadata), args.cli, args.timeout, args.poll)
        return 0
    owner = args.owner or kaggle_user()
    staged = {
        "code": lambda: stage_code(owner, args.build),
        "weights": lambda: stage_weights(owner, args.models, args.build),
        "wheels": lambda: stage_wheels(owner, args.packages, args.downloads, args.build),
        "kernel": lambda: stage_kernel(owner, args.build),
    }[args.what]()
    print(staged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
