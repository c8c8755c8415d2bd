"""The Kaggle CLI, run and read: each step of the road to a score, judged by what the CLI prints.

The CLI's exit status is not enough. kaggle 2.2.5 and 1.7.4.5 both exit 0 when the server refuses an upload or a
push, and only print so (``Dataset creation error: ...``, ``Kernel push error: ...``); they also word a missing
dataset differently (2.2.5: ``Not found`` then the hint ``The resource was not found. Check the spelling ...``;
1.7.4.5: ``404 Client Error: Not Found for url: ...``). So each step names the line the CLI prints on success
and fails otherwise, naming the dataset or kernel and quoting the CLI's own line.

The steps: publish a dataset (create it, or add a version), wait until datasets are processed, push the kernel,
follow its run (``kernels status``), fetch its log and files (``kernels output``) and submit a version of it to the
competition (``competitions submit -k OWNER/KERNEL -v N``).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "pip install -e '.[kaggle]' (or pip install 'kaggle==2.2.5' six)"
STATUS_TIMEOUT = 300  # seconds for one question to the server; uploads and pushes run as long as they need

# What the CLI prints when a step worked (2.2.5 and 1.7.4.5 alike, unless said).
DATASET_CREATED = re.compile(r"Dataset is being created")  # "Your private Dataset is being created. Please check ..."
VERSION_CREATED = re.compile(r"Dataset version is being created")
KERNEL_PUSHED = re.compile(r"Kernel version (?:(\d+) )?successfully pushed")
SUBMITTED = re.compile(r"Successfully submitted|Submission ref: \d+")  # the ref line: 2.2.5 only
KERNEL_STATUS = re.compile(r'has status "([^"]+)"')  # 'owner/slug has status "KernelWorkerStatus.RUNNING"'
FAILURE_MESSAGE = re.compile(r'Failure message: "(.*)"')
# A push that worked can still leave sources out ("The following are not valid dataset sources and could not be
# added to the kernel: [...]"): the run would not find them.
SOURCES_LEFT_OUT = re.compile(r"The following are not valid \w+ sources.*")
NOT_FOUND = re.compile(r"\b404\b|not found", re.IGNORECASE)
TELLING = re.compile(r"error|not found|could not|invalid|denied|required|refus", re.IGNORECASE)
VERSION_NUMBER = re.compile(r"\d+(?:\.\d+)+")

MISSING = "missing"  # our name for a dataset Kaggle does not have
DATASET_READY = "ready"
DATASET_FAILED = ("failed", "deleted")  # the other states (not_yet_persisted, blobs_received, ...) are processing
KERNEL_COMPLETE = "complete"
KERNEL_FAILED = ("error", "cancel_requested", "cancel_acknowledged")  # queued, running, new_script: still going


class KaggleSetupError(RuntimeError):
    """A step cannot go on (no CLI, no credentials, a refusal by Kaggle); the message says what and why."""


@dataclass(frozen=True)
class CliRun:
    """One call of the CLI: its command, exit status and what it printed (stdout and stderr together)."""

    command: list[str]
    returncode: int
    output: str

    def telling_line(self) -> str:
        """What the CLI said went wrong: its last two lines that read like an error (a message and its detail, or
        a hint), without a traceback's frames and progress bars; else its last line."""
        lines = [line.strip() for line in re.split(r"[\r\n]+", self.output) if line.strip()]
        lines = [line for line in lines if "%|" not in line and not line.startswith(('File "', "raise "))]
        errors = [line for line in lines if TELLING.search(line)]
        return " ".join(errors[-2:]) if errors else (lines or ["(no output)"])[-1]

    def failure(self, what: str) -> KaggleSetupError:
        return KaggleSetupError(f'{what}: the CLI said "{self.telling_line()}" (exit {self.returncode})')


def run_cli(cli: str, *args: object, echo: bool = False, timeout: float | None = STATUS_TIMEOUT) -> CliRun:
    """Run ``cli args``. With ``echo`` the CLI's output is shown as it comes (uploads print progress) and there is
    no time limit; either way it is kept for reading."""
    command = [*shlex.split(cli), *map(str, args)]
    try:
        if not echo:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
            return CliRun(command, done.returncode, done.stdout.decode(errors="replace"))
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
            chunks = []
            for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
                chunks.append(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            if chunks and not chunks[-1].endswith(b"\n"):  # the CLI ends some messages without one
                sys.stdout.buffer.write(b"\n")
            return CliRun(command, process.wait(), b"".join(chunks).decode(errors="replace"))
    except FileNotFoundError as error:
        raise KaggleSetupError(f"the Kaggle CLI {cli!r} was not found: {INSTALL_HINT}") from error
    except subprocess.TimeoutExpired as error:
        raise KaggleSetupError(f"`{shlex.join(command)}` gave no answer in {timeout:.0f} s (no network?)") from error


def expect(run: CliRun, success: re.Pattern, what: str) -> re.Match:
    """The CLI's success line; a failure naming ``what`` unless the CLI exited 0 and printed it."""
    found = success.search(run.output)
    if run.returncode != 0 or found is None:
        raise run.failure(what)
    return found


def cli_version(cli: str) -> str:
    """The CLI's version ("2.2.5"); a failure with its output when it cannot even say that (2.2.5 without six)."""
    run = run_cli(cli, "--version")
    found = VERSION_NUMBER.search(run.output)
    if run.returncode != 0 or found is None:
        raise KaggleSetupError(f"`{shlex.join(run.command)}` fails: {run.output.strip()[-800:]} ({INSTALL_HINT})")
    return found.group(0)


# --- datasets ------------------------------------------------------------------------------------------------
def dataset_status(dataset: str, cli: str) -> str:
    """What ``kaggle datasets status`` says of ``dataset`` (``ready``, ``blobs_received``, ``failed``, ...), or
    ``missing`` when Kaggle has no such dataset. Any other failure (no network, a CLI that crashes) raises with the
    CLI's line, so that it is never taken for a dataset still to be created."""
    run = run_cli(cli, "datasets", "status", dataset)
    lines = run.output.strip().splitlines()
    if run.returncode == 0 and lines and re.fullmatch(r"[a-z_]+", lines[-1].strip()):
        return lines[-1].strip()
    if NOT_FOUND.search(run.output):
        return MISSING
    raise run.failure(f"the status of dataset {dataset}")


def publish_dataset(dataset: str, folder: Path, message: str, cli: str, delete_old_versions: bool = False) -> str:
    """Upload the dataset staged in ``folder``: a new version when Kaggle has it, else create it. ``--dir-mode zip``
    because the CLI's default (skip) drops sub-folders such as ``kaggle_utils/`` without a word. Returns what was
    done, ``create`` or ``version``."""
    if dataset_status(dataset, cli) == MISSING:
        print(f"create {dataset}", file=sys.stderr)
        run = run_cli(cli, "datasets", "create", "-p", folder, "--dir-mode", "zip", echo=True)
        expect(run, DATASET_CREATED, f"creating dataset {dataset}")
        return "create"
    print(f"version {dataset}", file=sys.stderr)
    delete = ["--delete-old-versions"] if delete_old_versions else []
    run = run_cli(cli, "datasets", "version", "-p", folder, "-m", message, "--dir-mode", "zip", *delete, echo=True)
    expect(run, VERSION_CREATED, f"a new version of dataset {dataset}")
    return "version"


def wait_until_ready(datasets: list[str], cli: str, timeout: float = 1800, poll: float = 30) -> None:
    """Return once every dataset's newest version is ready, saying which it waits for: a kernel pushed earlier
    would mount the previous versions. Stops at once on a dataset that is missing, failed or deleted."""
    deadline = time.monotonic() + timeout
    waiting = list(datasets)
    while True:
        states = {dataset: dataset_status(dataset, cli) for dataset in waiting}
        missing = [d for d, state in states.items() if state == MISSING]
        if missing:
            raise KaggleSetupError(
                f"the kernel mounts datasets that do not exist yet: {missing} (make sync, make wheels)"
            )
        broken = {d: state for d, state in states.items() if state in DATASET_FAILED}
        if broken:
            raise KaggleSetupError(
                f"Kaggle says the newest version of {', '.join(f'{d} is {s}' for d, s in broken.items())}: "
                "publish it again (make sync-code, make sync-weights or make wheels)"
            )
        waiting = [d for d, state in states.items() if state != DATASET_READY]
        if not waiting:
            print(f"datasets ready: {', '.join(datasets)}", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            raise KaggleSetupError(f"still not ready after {timeout:.0f} s: {states}")
        print(f"waiting for Kaggle to process {', '.join(f'{d} ({states[d]})' for d in waiting)}", file=sys.stderr)
        time.sleep(poll)


# --- the kernel ----------------------------------------------------------------------------------------------
def push_kernel(kernel: str, folder: Path, cli: str) -> int | None:
    """Push the kernel staged in ``folder`` (Kaggle then runs it); its new version number, when the CLI says it."""
    run = run_cli(cli, "kernels", "push", "-p", folder, echo=True)
    pushed = expect(run, KERNEL_PUSHED, f"pushing kernel {kernel}")
    left_out = SOURCES_LEFT_OUT.search(run.output)
    if left_out:
        raise KaggleSetupError(f'kernel {kernel} was pushed, but its run will miss inputs: "{left_out.group(0)}"')
    return int(pushed.group(1)) if pushed.group(1) else None


def kernel_status(kernel: str, cli: str) -> tuple[str, str]:
    """The state of the kernel's latest run (``queued``, ``running``, ``complete``, ``error``, ...) and the failure
    message Kaggle gives with an error ("" otherwise)."""
    run = run_cli(cli, "kernels", "status", kernel)
    found = KERNEL_STATUS.search(run.output)
    if run.returncode != 0 or found is None:
        raise run.failure(f"the status of kernel {kernel}")
    state = found.group(1).split(".")[-1]  # 2.x and 1.7 print the enum: "KernelWorkerStatus.RUNNING"
    state = state.lower() if state.isupper() else re.sub(r"(?<=[a-z])(?=[A-Z])", "_", state).lower()
    message = FAILURE_MESSAGE.search(run.output)
    return state, message.group(1) if message else ""


def follow_kernel(kernel: str, cli: str, timeout: float = 43200, poll: float = 60) -> tuple[str, str]:
    """Ask for the kernel's state every ``poll`` seconds, saying each, until its run completes or fails; returns
    the final state and failure message. Kaggle caps a run at 12 hours, the default timeout."""
    start = time.monotonic()
    while True:
        state, message = kernel_status(kernel, cli)
        minutes = (time.monotonic() - start) / 60
        print(f"kernel {kernel}: {state} ({minutes:.0f} min)", file=sys.stderr)
        if state == KERNEL_COMPLETE or state in KERNEL_FAILED:
            return state, message
        if time.monotonic() - start > timeout:
            raise KaggleSetupError(f"kernel {kernel} still {state} after {timeout:.0f} s: `make kernel-follow` again")
        time.sleep(poll)


def fetch_output(kernel: str, cli: str, folder: Path) -> list[Path]:
    """Download the files and the log of the kernel's latest run into an emptied ``folder``."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    run = run_cli(cli, "kernels", "output", kernel, "-p", folder, timeout=None)
    if run.returncode != 0:
        raise run.failure(f"fetching the output of kernel {kernel}")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines a run printed. Kaggle's log is a JSON list of ``{"stream_name", "time", "data"}`` chunks."""
    text = log.read_text(errors="replace")
    with contextlib.suppress(ValueError, TypeError, AttributeError):  # a plain-text log is shown as it is
        text = "".join(chunk.get("data", "") for chunk in json.loads(text))
    return "\n".join(text.rstrip().splitlines()[-lines:])


def submit_version(kernel: str, version: int, competition: str, file_name: str, message: str, cli: str) -> None:
    """Submit version ``version`` of the kernel to the code competition (Kaggle reruns it on the hidden test)."""
    run = run_cli(
        cli,
        "competitions",
        "submit",
        competition,
        "-k",
        kernel,
        "-v",
        version,
        "-f",
        file_name,
        "-m",
        message,
        echo=True,
    )
    try:
        expect(run, SUBMITTED, f"submitting version {version} of kernel {kernel} to {competition}")
    except KaggleSetupError as error:
        if run.returncode != 0:
            raise
        # Exit 0 without a known success line: the server's wording of an accepted code submission is not known
        # for sure, so say where to look rather than only that it failed.
        raise KaggleSetupError(f"{error}; if Kaggle took it, it is on the competition's submissions page") from None
