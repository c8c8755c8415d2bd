"""The kernel's offline install from the wheels dataset: only what the image lacks or has too old.

Kaggle's image already brings most of what the pipeline imports, at versions that move with the image (and its
Python: 3.11 until late 2025, 3.12 since, 3.13 on Colab). The wheels dataset holds the project's tested versions
for each of those Pythons, described by ``wheels.json`` (name, pinned version, the version range the project
accepts, the module it provides). A package the image has at an accepted version is left alone; the others are
installed with pip, offline, into a folder put first on ``sys.path``. A submission never dies because a pinned
wheel does not fit this Python: it stops only when a module it needs still cannot be imported, with one line
naming the module, the Python and the wheels it found.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kaggle_utils.core.paths import WHEELS_MANIFEST

INSTALL_DIR = Path(tempfile.gettempdir()) / "rsna24-site"  # put first on sys.path, so it wins over the image
# Import names that differ from the distribution's; the DICOM decoders only matter for compressed files.
MODULES = {
    "pylibjpeg-libjpeg": "libjpeg",
    "pylibjpeg-openjpeg": "openjpeg",
    "pylibjpeg-rle": "rle",
    "pyjpegls": "jpeg_ls",
    "kornia-rs": "kornia_rs",
}
OPTIONAL = {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls"}


class MissingModuleError(ImportError):
    """A module the pipeline needs is neither in the image nor installable from the wheels dataset."""


@dataclass(frozen=True)
class Wheel:
    """One package of the wheels dataset: its pinned version and the versions the project accepts."""

    name: str
    version: str
    accepts: str = ""  # a PEP 440 specifier such as ">=1.0.9"; "" accepts any version

    @property
    def module(self) -> str:
        return MODULES.get(self.name, self.name.replace("-", "_"))

    @property
    def optional(self) -> bool:
        return self.name in OPTIONAL

    def installed(self) -> str | None:
        """The version the environment has, or None."""
        try:
            return importlib.metadata.version(self.name)
        except importlib.metadata.PackageNotFoundError:
            return None

    def usable(self) -> bool:
        found = self.installed()
        return found is not None and Version(found) in SpecifierSet(self.accepts)

    def files(self, folder: Path) -> list[str]:
        """The wheel files of this package and version in ``folder``."""
        return sorted(
            w.name
            for w in Path(folder).glob("*.whl")
            if parse_wheel_filename(w.name)[:2] == (canonicalize_name(self.name), Version(self.version))
        )


def read_manifest(folder: Path) -> list[Wheel]:
    return [Wheel(**entry) for entry in json.loads((Path(folder) / WHEELS_MANIFEST).read_text())["packages"]]


def write_manifest(folder: Path, wheels: list[Wheel]) -> Path:
    path = Path(folder) / WHEELS_MANIFEST
    path.write_text(json.dumps({"packages": [w.__dict__ for w in wheels]}, indent=1) + "\n")
    return path


def pip_install(wheel: Wheel, folder: Path, target: Path) -> str | None:
    """Install one pinned wheel offline into ``target``; pip's last line when it could not."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade"]
    command += ["--find-links", str(folder), "--target", str(target), f"{wheel.name}=={wheel.version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"pip exited {done.returncode}"


def import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported (a dependency of it may be what is missing), or None when it can."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        return str(error)
    return None


def install_offline(folder: Path, target: Path = INSTALL_DIR) -> list[str]:
    """Install from the wheels dataset at ``folder`` what this environment lacks; returns what was installed.

    Raises MissingModuleError when a needed module is still not importable; an optional one gets a warning."""
    target.mkdir(parents=True, exist_ok=True)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    installed = []
    for wheel in read_manifest(folder):
        if wheel.usable():
            continue
        problem = pip_install(wheel, folder, target)
        importlib.invalidate_caches()
        if problem is None:
            installed.append(f"{wheel.name}=={wheel.version}")
        else:
            print(
                f"warning: {wheel.name}=={wheel.version} not installed on Python {python}: {problem}", file=sys.stderr
            )
        error = import_error(wheel.module)
        if error is None:
            continue
        found = ", ".join(wheel.files(folder)) or "none"
        line = f"cannot import {wheel.module} ({error}) on Python {python}; wheels of {wheel.name}: {found}"
        if not wheel.optional:
            raise MissingModuleError(line + (f"; pip: {problem}" if problem else ""))
        print(f"warning: {line} (compressed DICOMs of that syntax will not decode)", file=sys.stderr)
    return installed
