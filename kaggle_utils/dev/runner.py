"""Run the paired notebooks headless: read the percent ``.py`` with jupytext, execute it in a Jupyter kernel
(nbclient) and save the executed ``.ipynb`` with its outputs. Used by ``make demo`` and the tests.

    python -m kaggle_utils.dev.runner notebooks/01_preprocess.py --out work/executed --set PROFILE=demo

What the cells print reaches the console as it is printed: stdout, and stderr too (warnings, each fallback a
notebook reports), of which progress bars show only their final state. The parameters given with ``--set`` are
checked (``parameters.check_parameters``) before the first notebook starts, so a wrong one costs seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jupytext
import nbformat
from nbclient import NotebookClient

from kaggle_utils.core.config import ConfigError
from kaggle_utils.core.parameters import check_parameters

NOISE = ("TqdmWarning: IProgress not found",)
"""Warnings not echoed: without ipywidgets, ``tqdm.auto`` warns once per kernel that it draws text bars, which is what
a headless run wants."""

WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: ")
"""The first line of a printed warning (``file:line: Category: message``); the indented line under it, the source
line that warned, is not echoed."""

BAR_STATE = re.compile(r"^[^|\n]*\d+%\|[^|]*\|[^\[\]]*\[[^\]]*\]")
"""A progress bar's state (``desc: 40%|####  | 4/10 [00:01<00:02, 3.1it/s]``), which other text can follow on the
same line when it is written while the bar is drawn."""


def run_notebook(
    source: Path,
    executed: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: int | None = None,
    echo: bool = True,
) -> nbformat.NotebookNode:
    """Execute a notebook (``.py`` or ``.ipynb``) in its own folder; raises ``CellExecutionError`` on a failing
    cell. Parameters reach the notebook as environment variables (see ``parameters.notebook_params``)."""
    source = Path(source)
    notebook = jupytext.read(source)
    client = EchoingClient(
        notebook, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(source.parent)}}
    )
    client.echo_as = source.stem if echo else ""
    if echo:
        client.on_cell_start = lambda cell, cell_index, **_: _announce(source.stem, cell, cell_index, client.started)
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if executed is not None:
            executed.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, executed)
    return notebook


def _announce(name: str, cell: nbformat.NotebookNode, index: int, started: float) -> None:
    """Say which code cell starts (its first line that is not a comment), so long cells show progress."""
    lines = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")]
    if cell.cell_type == "code" and lines:
        print(f"[{name} {time.time() - started:6.0f}s] cell {index}: {lines[0][:90]}", flush=True)


class EchoingClient(NotebookClient):
    """A notebook client that prints each line a cell writes to stdout or stderr as it arrives, prefixed with the
    notebook's name and the seconds since it started (``echo_as`` set); a line a progress bar rewrites in place
    shows only its last state, and a bar that clears itself not at all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.echo_as = ""
        self.started = time.time()
        self.pending: dict[str, str] = defaultdict(str)
        self.after_warning = False  # the last line echoed began a warning

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> Any:
        if self.echo_as and msg["msg_type"] == "stream":
            self.echo(msg["content"]["name"], msg["content"]["text"])
        return super().output(outs, msg, display_id, cell_index)

    def echo(self, stream: str, text: str) -> None:
        """Print the complete lines of ``stream`` written so far; keep the rest for the next write."""
        *lines, self.pending[stream] = (self.pending[stream] + text).split("\n")
        for line in lines:
            shown = line.split("\r")[-1].rstrip()  # a bar's last state; "" for one that cleared itself
            bar = BAR_STATE.match(shown)
            if bar and shown[bar.end() :].strip():  # text written over a bar that is still drawing: the text only
                shown = shown[bar.end() :]
            if self.after_warning and shown.startswith("  "):
                self.after_warning = False
                continue
            self.after_warning = bool(WARNING_LINE.match(shown))
            if shown.strip() and not any(noise in shown for noise in NOISE):
                print(f"[{self.echo_as} {time.time() - self.started:6.0f}s] {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the executed .ipynb copies")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a notebook parameter")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.set)
    try:
        check_parameters(env)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    for source in args.notebooks:
        print(f"== {source}", flush=True)
        started = time.time()
        run_notebook(source, args.out / f"{source.stem}.ipynb" if args.out else None, env)
        print(f"== {source} done in {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
