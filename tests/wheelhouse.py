"""Small, valid wheels built on the spot, so the offline install and its resolution are tested without a network."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


def build_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any", module: str | None = None) -> Path:
    """``{name}-{version}-{tag}.whl`` in ``folder`` with one module that records its version."""
    dist = name.replace("-", "_")
    module = module or dist
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = [f"{path},sha256={_digest(text)},{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def pip_resolves(folder: Path, python: str, requirement: str, target: Path) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` of ``requirement`` from ``folder`` alone, as the kernel's Python ``python`` would."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--platform", "manylinux_2_17_x86_64", "--target", str(target)]
    return subprocess.run([*command, "--find-links", str(folder), requirement], capture_output=True, text=True)
