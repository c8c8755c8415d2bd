"""Run the paired notebooks headless: read the percent ``.py`` with jupytext, execute it in a Jupyter kernel
(nbclient) and save the executed ``.ipynb`` with its outputs. Used by ``make demo`` and the tests.

    python -m kaggle_utils.dev.runner notebooks/01_preprocess.py --out work/executed --set PROFILE=demo
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient


def run_notebook(
    source: Path,
    executed: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: int | None = None,
    echo: bool = True,
) -> nbformat.NotebookNode:
    """Execute a notebook (``.py`` or ``.ipynb``) in its own folder; raises ``CellExecutionError`` on a failing
    cell. Parameters reach the notebook as environment variables (see ``config.notebook_params``)."""
    source = Path(source)
    notebook = jupytext.read(source)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(source.parent)}}
    )
    started = time.time()
    if echo:
        client.on_cell_start = lambda cell, cell_index, **_: _announce(source.stem, cell, cell_index, started)
        client.on_cell_executed = lambda cell, **_: _echo(source.stem, cell, started)
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


def _echo(name: str, cell: nbformat.NotebookNode, started: float) -> None:
    """Print what a cell printed (stdout only: progress bars go to stderr), with the elapsed time."""
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout").rstrip()
    if text:
        print(f"[{name} {time.time() - started:6.0f}s] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the executed .ipynb copies")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a notebook parameter")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.set)
    for source in args.notebooks:
        print(f"== {source}", flush=True)
        started = time.time()
        run_notebook(source, args.out / f"{source.stem}.ipynb" if args.out else None, env)
        print(f"== {source} done in {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
