"""Credentials are found exactly where the Kaggle CLI reads them, per CLI version: each layout a user may have is
accepted by kaggle_utils.dev.kaggle_auth when, and only when, the CLI (the fake of tests/dev/fakebin, which
authenticates as kaggle 2.2.5 or 1.7.4.5 do) accepts it, and the file used is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kaggle_utils.dev import kaggle_auth

FAKE = Path(__file__).parent / "fakebin" / "kaggle"
KEY = json.dumps({"username": "tester", "key": "k"})


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# name: (set-up of HOME and the environment, accepted by 2.2.5, by 1.7.4.5, the source named)
Layout = Callable[[Path, dict], None]
LAYOUTS: dict[str, tuple[Layout, bool, bool, str]] = {
    "kaggle.json in ~/.kaggle": (lambda h, e: write(h / ".kaggle/kaggle.json", KEY), True, True, ".kaggle/kaggle.json"),
    "kaggle.json in ~/.config/kaggle": (
        lambda h, e: write(h / ".config/kaggle/kaggle.json", KEY),
        True,
        True,
        ".config/kaggle/kaggle.json",
    ),
    "kaggle.json in $KAGGLE_CONFIG_DIR": (
        lambda h, e: (write(h / "cfg/kaggle.json", KEY), e.update(KAGGLE_CONFIG_DIR=str(h / "cfg"))),
        True,
        True,
        "cfg/kaggle.json",
    ),
    "KAGGLE_USERNAME and KAGGLE_KEY": (
        lambda h, e: e.update(KAGGLE_USERNAME="tester", KAGGLE_KEY="k"),
        True,
        True,
        "KAGGLE_USERNAME and KAGGLE_KEY",
    ),
    "a username in kaggle.json, KAGGLE_KEY": (
        lambda h, e: (write(h / ".kaggle/kaggle.json", '{"username": "tester"}'), e.update(KAGGLE_KEY="k")),
        True,
        False,
        ".kaggle/kaggle.json and KAGGLE_KEY",
    ),
    "`kaggle auth login`": (
        lambda h, e: write(h / ".kaggle/credentials.json", '{"refresh_token": "r", "username": "tester"}'),
        True,
        False,
        ".kaggle/credentials.json",
    ),
    "a token in ~/.kaggle/access_token": (
        lambda h, e: write(h / ".kaggle/access_token", "t\n"),
        True,
        False,
        "access_token",
    ),
    "a token in ~/.kaggle/access_token.txt": (
        lambda h, e: write(h / ".kaggle/access_token.txt", "t"),
        True,
        False,
        "access_token.txt",
    ),
    "KAGGLE_API_TOKEN": (lambda h, e: e.update(KAGGLE_API_TOKEN="t"), True, False, "KAGGLE_API_TOKEN"),
    "a token in ~/.config/kaggle (never read)": (
        lambda h, e: write(h / ".config/kaggle/access_token", "t"),
        False,
        False,
        "",
    ),
    "kaggle.json in ~/.config/kaggle beside a ~/.kaggle (never read)": (
        lambda h, e: (write(h / ".config/kaggle/kaggle.json", KEY), (h / ".kaggle").mkdir()),
        False,
        False,
        "",
    ),
    "an empty token file": (lambda h, e: write(h / ".kaggle/access_token", "\n"), False, False, ""),
    "nothing": (lambda h, e: None, False, False, ""),
}
CLI_VERSIONS = {"2.2.5": 1, "1.7.4.5": 2}  # the column of LAYOUTS that says what each accepts


def set_up(layout: str, tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE", "FAKE_KAGGLE", "XDG_CONFIG"))}
    env.update(HOME=str(home), FAKE_KAGGLE_LOG=str(tmp_path / "kaggle.log"))
    LAYOUTS[layout][0](home, env)
    return env


def fake_cli_accepts(env: dict, version: str) -> bool:
    """Whether the fake CLI gets past authentication (the dataset it is asked about does not exist)."""
    command = [sys.executable, str(FAKE), "datasets", "status", "tester/rsna24-weights"]
    done = subprocess.run(command, env={**env, "FAKE_KAGGLE_VERSION": version}, capture_output=True, text=True)
    assert done.returncode == 1
    said = done.stdout + done.stderr
    return "Authentication required" not in said and "kaggle.json" not in said and "Missing" not in said


@pytest.mark.parametrize("version", CLI_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_credentials_are_accepted_exactly_where_the_cli_reads_them(tmp_path, layout, version):
    env = set_up(layout, tmp_path)
    expected = LAYOUTS[layout][CLI_VERSIONS[version]]
    found = kaggle_auth.find_credentials(env, version)
    assert (found is not None) == expected == fake_cli_accepts(env, version)
    if found is not None:
        assert LAYOUTS[layout][3] in found.describe()


def test_what_to_set_names_each_way_of_the_version_and_the_files_it_ignores(tmp_path):
    env = set_up("a token in ~/.config/kaggle (never read)", tmp_path)
    modern = kaggle_auth.missing_message(env, "2.2.5")
    for way in ("kaggle auth login", "KAGGLE_API_TOKEN", "~/.kaggle/access_token", "kaggle.json", "KAGGLE_KEY"):
        assert way in modern
    assert f"not read by this CLI: {tmp_path / 'home/.config/kaggle/access_token'}" in modern
    legacy = kaggle_auth.missing_message(env, "1.7.4.5")
    assert "reads no token" in legacy and "KAGGLE_USERNAME and KAGGLE_KEY" in legacy


def test_the_owner_is_the_user_of_the_credentials_used(tmp_path):
    env = set_up("`kaggle auth login`", tmp_path)
    assert kaggle_auth.owner_name(env) == "tester"
    env = set_up("KAGGLE_USERNAME and KAGGLE_KEY", tmp_path / "b")
    write(Path(env["HOME"]) / ".kaggle/kaggle.json", json.dumps({"username": "file-user", "key": "k"}))
    assert kaggle_auth.owner_name(env) == "tester"  # the environment overrides kaggle.json, as in the CLI
    assert kaggle_auth.owner_name(set_up("KAGGLE_API_TOKEN", tmp_path / "c")) == ""  # a token does not say
