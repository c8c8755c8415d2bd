"""The kernel's offline install: what the image has at an accepted version stays, the rest comes from the wheels."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from wheelhouse import build_wheel

from kaggle_utils.core import wheels
from kaggle_utils.core.wheels import MissingModuleError, Wheel, install_offline, read_manifest, write_manifest


def dataset(folder: Path, *entries: Wheel) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, list(entries))
    return folder


def test_the_manifest_round_trips(tmp_path):
    entries = [Wheel("timm", "1.0.31", ">=1.0.9"), Wheel("pylibjpeg-libjpeg", "2.5.0")]
    assert read_manifest(dataset(tmp_path, *entries)) == entries
    assert [w.module for w in entries] == ["timm", "libjpeg"] and entries[1].optional


def test_a_missing_package_is_installed_and_an_accepted_one_left_alone(tmp_path, monkeypatch):
    build_wheel(tmp_path / "wheels", "rsna-probe", "1.0")
    folder = dataset(tmp_path / "wheels", Wheel("packaging", "0.1", ">=20"), Wheel("rsna-probe", "1.0", ">=1.0"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert install_offline(folder, tmp_path / "site") == ["rsna-probe==1.0"]  # packaging: the image's is fine
    assert (tmp_path / "site" / "rsna_probe" / "__init__.py").is_file()
    assert sys.path[0] == str(tmp_path / "site")


def test_a_needed_module_that_stays_missing_stops_with_one_line(tmp_path, monkeypatch):
    build_wheel(tmp_path / "wheels", "rsna-absent", "2.0", tag="cp399-cp399-manylinux_2_17_x86_64")
    folder = dataset(tmp_path / "wheels", Wheel("rsna-absent", "2.0", ">=2"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(MissingModuleError) as error:
        install_offline(folder, tmp_path / "site")
    message = str(error.value)
    assert "\n" not in message and "cannot import rsna_absent" in message
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in message
    assert "rsna_absent-2.0-cp399-cp399-manylinux_2_17_x86_64.whl" in message


def test_an_optional_decoder_that_cannot_install_only_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wheels, "OPTIONAL", {"rsna-decoder"})
    folder = dataset(tmp_path / "wheels", Wheel("rsna-decoder", "1.0"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert install_offline(folder, tmp_path / "site") == []
    assert "cannot import rsna_decoder" in capsys.readouterr().err


def test_a_too_old_package_is_replaced_and_the_new_one_wins(tmp_path, monkeypatch):
    old_site, site = tmp_path / "old", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(old_site),
            str(build_wheel(tmp_path / "old-wheels", "rsna-aged", "1.0")),
        ],
        check=True,
    )
    build_wheel(tmp_path / "wheels", "rsna-aged", "2.0")
    monkeypatch.setattr(sys, "path", [str(old_site), *sys.path])
    assert importlib.metadata.version("rsna-aged") == "1.0"
    assert install_offline(dataset(tmp_path / "wheels", Wheel("rsna-aged", "2.0", ">=2")), site) == ["rsna-aged==2.0"]
    assert importlib.metadata.version("rsna-aged") == "2.0"
    sys.modules.pop("rsna_aged", None)
