"""Which credentials the Kaggle CLI will use, found where each CLI version reads them.

kaggle 2.x (through kagglesdk) tries, in order:

1. an access token: ``KAGGLE_API_TOKEN`` (the token, or a file that holds it), else ``~/.kaggle/access_token`` or
   ``~/.kaggle/access_token.txt``;
2. the API key: ``username`` and ``key`` from ``kaggle.json`` in the CLI's config folder, each overridden by
   ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``;
3. the OAuth login that ``kaggle auth login`` caches in ``~/.kaggle/credentials.json``.

kaggle 1.x reads the API key only: from ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` when both are set, else from
``kaggle.json``. The config folder is one folder, never a search: ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle`` when it
exists, else (Linux) ``$XDG_CONFIG_HOME/kaggle``, by default ``~/.config/kaggle``. Tokens and the OAuth login are
read from ``~/.kaggle`` whatever the config folder. A token is checked by the server when the CLI starts; here only
its presence can be.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KAGGLE_JSON = "kaggle.json"
TOKEN_FILES = ("access_token", "access_token.txt")
OAUTH_FILE = "credentials.json"  # written by `kaggle auth login`
SETTINGS_URL = "https://www.kaggle.com/settings/api"
KEY_VARIABLES = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}  # kaggle.json's fields and their overrides


@dataclass(frozen=True)
class Credentials:
    """What the CLI will authenticate with, and where it was read."""

    method: str  # "access token", "API key" or "OAuth login"
    source: str
    username: str = ""

    def describe(self) -> str:
        user = f" (user {self.username})" if self.username else ""
        return f"{self.method} from {self.source}{user}"


def major_version(cli_version: str) -> int:
    """2 for "2.2.5"; 0 when unknown."""
    head = cli_version.split(".")[0]
    return int(head) if head.isdigit() else 0


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def config_dir(env: Mapping[str, str]) -> Path:
    """The one folder whose ``kaggle.json`` the CLI reads (both versions choose it alike)."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    dot_kaggle = _home(env) / ".kaggle"
    if sys.platform.startswith("linux") and not dot_kaggle.exists():
        return Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config") / "kaggle"
    return dot_kaggle


def _read_json(path: Path) -> dict:
    """The file's JSON object; {} when absent or unreadable, as the CLI treats it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_in(path: Path) -> bool:
    return path.is_file() and bool(path.read_text().strip())


def access_token(env: Mapping[str, str]) -> Credentials | None:
    """The token kaggle 2.x would send, if any."""
    value = env.get("KAGGLE_API_TOKEN")
    if value and Path(value).exists():  # a file holding the token; an empty one ends the search, as in the CLI
        return Credentials("access token", f"{value} (KAGGLE_API_TOKEN)") if _token_in(Path(value)) else None
    if value:
        return Credentials("access token", "KAGGLE_API_TOKEN")
    for name in TOKEN_FILES:
        path = _home(env) / ".kaggle" / name
        if _token_in(path):
            return Credentials("access token", str(path))
    return None


def api_key(env: Mapping[str, str], cli_major: int = 2) -> Credentials | None:
    """The ``username`` and ``key`` pair, merged from ``kaggle.json`` and the environment as the CLI merges them."""
    path = config_dir(env) / KAGGLE_JSON
    from_env = {name: env[variable] for name, variable in KEY_VARIABLES.items() if variable in env}
    from_file = _read_json(path)
    if cli_major < 2:  # the environment only when it has both, else kaggle.json alone
        from_file, from_env = ({}, from_env) if len(from_env) == len(KEY_VARIABLES) else (from_file, {})
    values = {**from_file, **from_env}
    if not KEY_VARIABLES.keys() <= values.keys():
        return None
    sources = dict.fromkeys(KEY_VARIABLES[name] if name in from_env else str(path) for name in KEY_VARIABLES)
    return Credentials("API key", " and ".join(sources), str(values["username"]))


def oauth_login(env: Mapping[str, str]) -> Credentials | None:
    """The login ``kaggle auth login`` cached (kaggle 2.x only)."""
    path = _home(env) / ".kaggle" / OAUTH_FILE
    data = _read_json(path)
    if not data.get("refresh_token"):
        return None
    return Credentials("OAuth login", str(path), str(data.get("username") or ""))


def find_credentials(env: Mapping[str, str] | None = None, cli_version: str = "2") -> Credentials | None:
    """The credentials the CLI of ``cli_version`` will use, in its order; None when it has none."""
    env = os.environ if env is None else env
    if major_version(cli_version) < 2:
        return api_key(env, cli_major=1)
    return access_token(env) or api_key(env) or oauth_login(env)


def unread_files(env: Mapping[str, str], cli_version: str) -> list[Path]:
    """Credential files that exist but that this CLI does not read (a token beside a ``kaggle.json`` in
    ``~/.config/kaggle``, a ``kaggle.json`` outside the config folder, a token or login with kaggle 1.x)."""
    home, folder = _home(env), config_dir(env)
    candidates = [home / ".kaggle" / KAGGLE_JSON, home / ".config" / "kaggle" / KAGGLE_JSON]
    candidates += [home / sub / name for sub in (".kaggle", ".config/kaggle") for name in TOKEN_FILES]
    candidates += [folder / name for name in TOKEN_FILES] + [home / ".kaggle" / OAUTH_FILE]
    read = {folder / KAGGLE_JSON}
    if major_version(cli_version) >= 2:
        read |= {home / ".kaggle" / name for name in (*TOKEN_FILES, OAUTH_FILE)}
    return sorted({path for path in candidates if path.is_file() and path not in read})


def missing_message(env: Mapping[str, str] | None = None, cli_version: str = "2") -> str:
    """What to set, for this CLI version, when it has no credentials; and which files it would ignore."""
    env = os.environ if env is None else env
    key_file = config_dir(env) / KAGGLE_JSON
    key = f"an API key ({SETTINGS_URL}) in {key_file} or in KAGGLE_USERNAME and KAGGLE_KEY"
    if major_version(cli_version) >= 2:
        ways = f"`kaggle auth login`, or a token in KAGGLE_API_TOKEN or ~/.kaggle/access_token, or {key}"
    else:
        ways = f"{key} (kaggle {cli_version} reads no token: `pip install 'kaggle==2.2.5' six` for one)"
    unread = unread_files(env, cli_version)
    ignored = f"; not read by this CLI: {', '.join(map(str, unread))}" if unread else ""
    return f"no Kaggle credentials that kaggle {cli_version} reads: use {ways}{ignored}"


def owner_name(env: Mapping[str, str] | None = None) -> str:
    """The Kaggle user that our datasets and kernel belong to: the user of the credentials kaggle 2.x would use,
    else any username the set-up names (a token alone does not say its user); "" when none does."""
    env = os.environ if env is None else env
    found = find_credentials(env)
    named = [
        found.username if found else "",
        env.get("KAGGLE_USERNAME", ""),
        str(_read_json(config_dir(env) / KAGGLE_JSON).get("username") or ""),
        str(_read_json(_home(env) / ".kaggle" / OAUTH_FILE).get("username") or ""),
    ]
    return next((name for name in named if name), "")


if __name__ == "__main__":  # the Makefile's KAGGLE_USER: fast, it imports nothing heavy
    print(owner_name())
