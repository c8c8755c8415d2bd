"""Every check that needs a GPU, in one run sized for a machine lent for a few minutes: the GPU-only tests,
``make preflight``, ``make bench-infer`` and ``make bench-train``, each under its own time limit inside one budget
(about 8 minutes on an H100), then, with what is left, the preflight of a 15 GiB T4 simulated on the card.

    python3 -m kaggle_utils.dev.gpu_checks run --out DIR [--budget 480]    # on the GPU machine (make gpu-checks)
    python -m kaggle_utils.dev.gpu_checks kit                              # before, where pip works (make gpu-kit)

Everything lands in ``--out``, and few files, none nested deeper than one folder (some lending machines return only
that): ``gpu_checks.log`` (every step's output, in order), ``gpu_checks.json`` (each step's exit status, seconds
and whether its limit stopped it), ``preflight.json`` and ``preflight.png``, and ``t4/`` with the simulated T4's.
A step stopped at its limit still leaves what it printed: the benchmarks and preflight print a line per preset.

A GPU machine without internet often has CUDA, PyTorch and the scientific stack but not kornia, pydicom and its
decoders or the notebook runner's Jupyter packages. ``kit`` downloads wheels of those (the dependencies of
``kaggle_utils[notebooks]`` outside what PyTorch, timm, pandas, opencv and matplotlib bring) into ``.gpu/wheels``,
and copies the seed's benchmark script there when it is beside the repository; ``run`` installs the wheels whose
package the machine lacks into a folder put on ``PYTHONPATH``. Until then this module imports only the standard
library.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggle_utils.core.paths import GPU_KIT_DIR, REPO_ROOT, SEED_BENCH_SCRIPTS

BUDGET_S = 480
LOG, SUMMARY = "gpu_checks.log", "gpu_checks.json"
MIN_STEP_S = 20  # a step that would get less than this is skipped
PROJECT = "kaggle-utils-rsna24"
PROJECT_EXTRAS = ("notebooks",)  # the notebook runner, for preflight's end-to-end pass
IMAGE_ROOTS = ("torch", "torchvision", "numpy", "pandas", "opencv-python-headless", "matplotlib", "timm", "tqdm")
"""What a CUDA + PyTorch image brings, with everything they depend on: never carried, so the image's builds stay."""


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    limit_s: int


@dataclass
class Outcome:
    name: str
    command: list[str]
    limit_s: float
    seconds: float = 0.0
    returncode: int | None = None
    timed_out: bool = False
    skipped: bool = False
    output: list[str] = field(default_factory=list, repr=False)


# --- the kit: wheels for a machine without internet -----------------------------------------------------
def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[tuple[str, tuple[str, ...]]], python: str) -> dict[str, str]:
    """Installed distributions that ``roots`` (name, extras) need under Python ``python``: name -> version."""
    from packaging.requirements import Requirement  # only where the kit is made

    found: dict[str, str] = {}

    def walk(name: str, extras: tuple[str, ...]) -> None:
        key = _normalise(name)
        if key in found:
            return
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return  # an optional dependency not installed here is not needed either
        found[key] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            environments = [{"python_version": python, "extra": extra} for extra in (*extras, "")]
            if marker is None or any(marker.evaluate(env) for env in environments):
                walk(requirement.name, tuple(requirement.extras))

    for name, extras in roots:
        walk(name, extras)
    return found


def wheel_pins(python: str) -> list[str]:
    """``name==version`` of what the project needs beyond a CUDA + PyTorch image, at the versions installed here."""
    ours = closure([(PROJECT, PROJECT_EXTRAS)], python)
    image = closure([(name, ()) for name in IMAGE_ROOTS], python)
    return [f"{name}=={version}" for name, version in sorted(ours.items()) if name not in image and name != PROJECT]


def make_kit(kit: Path, python: str, platforms: list[str]) -> list[str]:
    """Download the wheels into ``kit/wheels`` and copy the seed's benchmark script into ``kit``; returns the pins."""
    pins = wheel_pins(python)
    target = ["--python-version", python, "--implementation", "cp", *[f"--platform={p}" for p in platforms]]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(kit / "wheels"), "--no-deps"]
    subprocess.run([*pip, "--only-binary=:all:", *target, *pins], check=True)
    seed = SEED_BENCH_SCRIPTS[0]
    if seed.exists():
        shutil.copyfile(seed, kit / seed.name)
    return pins


def install_missing(wheels: Path, site: Path) -> list[str]:
    """Install into ``site`` the wheels in ``wheels`` whose package this Python lacks; returns their names."""
    missing = [w for w in sorted(wheels.glob("*.whl")) if not installed(w.name.split("-")[0])]
    if missing:
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--root-user-action=ignore"]  # a GPU machine often runs as root; the target folder is ours
        subprocess.run([*pip, "--target", str(site), *map(str, missing)], check=True)
    return [w.name.split("-")[0] for w in missing]


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# --- the steps -------------------------------------------------------------------------------------------
def make_or_module(target: str, variables: list[str], module: list[str]) -> list[str]:
    """``make target`` with this Python and no set-up (``-o install``: the machine brings its own environment), or,
    where there is no make, the module the target runs with the same settings."""
    if shutil.which("make") is None:
        return [sys.executable, "-m", *module]
    return ["make", f"PY={sys.executable}", "-o", "install", target, *variables]


def plan_steps(out: Path, scratch: Path) -> list[Step]:
    """The checks in order of value; each step's limit is its share of about 8 minutes on an H100."""
    python, bench = sys.executable, scratch / "bench"
    train_flags = ["--steps", "5", "--warmup", "2", "--host-batches", "2"]
    t4 = ["--presets", "stage1_t2", "fs", "sp2", "--memory-gib", "15", "--set", "amp_dtype=fp16", "--steps", "2"]
    t4 += ["--warmup", "1", "--infer", "off", "--e2e", "off", "--out", str(out / "t4")]
    return [
        Step("gpu tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], 90),
        Step(
            "preflight",
            make_or_module(
                "preflight",
                [f"WORK_DIR={scratch / 'work'}", f"PREFLIGHT_FLAGS=--out {out}"],
                ["kaggle_utils.dev.preflight", "--out", str(out)],
            ),
            240,
        ),
        Step(
            "bench-infer",
            make_or_module(
                "bench-infer",
                ["BENCH_STUDIES=4", f"WORK_DIR={bench}"],
                ["kaggle_utils.dev.bench_infer", "--studies", "4", "--work-dir", str(bench)],
            ),
            90,
        ),
        Step(
            "bench-train",
            make_or_module(
                "bench-train", [f"BENCH_FLAGS={' '.join(train_flags)}"], ["kaggle_utils.dev.bench_train", *train_flags]
            ),
            120,
        ),
        # what a 16 GB T4 would need (fp16 and the grad scaler, as on a T4), with the time that is left
        Step("preflight, T4 simulated", [python, "-m", "kaggle_utils.dev.preflight", *t4], 150),
    ]


def run_step(step: Step, limit_s: float, env: dict[str, str], log) -> Outcome:
    """Run ``step`` with its output streamed to the console and ``log``; at ``limit_s`` its whole process group is
    stopped (torch, loader threads, a notebook's kernel)."""
    outcome = Outcome(step.name, step.command, round(limit_s))
    header = f"\n===== {step.name} (limit {limit_s:.0f} s): {' '.join(step.command)}\n"
    print(header, end="", flush=True)
    log.write(header)
    started = time.perf_counter()
    process = subprocess.Popen(
        step.command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    reader = threading.Thread(target=_stream, args=(process.stdout, log, outcome.output))
    reader.start()
    try:
        outcome.returncode = process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        outcome.returncode = _stop(process)
    reader.join(timeout=10)
    outcome.seconds = round(time.perf_counter() - started, 1)
    footer = f"===== {step.name}: exit {outcome.returncode}{' (stopped at its limit)' if outcome.timed_out else ''}"
    footer += f" after {outcome.seconds:.0f} s\n"
    print(footer, end="", flush=True)
    log.write(footer)
    return outcome


def _stream(pipe, log, lines: list[str]) -> None:
    for line in pipe:
        sys.stdout.write(line)
        log.write(line)
        lines.append(line)
    sys.stdout.flush()


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM to the step's process group, SIGKILL if it lingers."""
    for sent, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def run_all(steps: list[Step], budget_s: float, env: dict[str, str], log) -> list[Outcome]:
    """Each step in turn, under the lesser of its limit and what the budget has left; skipped below MIN_STEP_S."""
    started, outcomes = time.perf_counter(), []
    for step in steps:
        left = budget_s - (time.perf_counter() - started)
        if left < MIN_STEP_S:
            outcomes.append(Outcome(step.name, step.command, 0, skipped=True))
            continue
        outcomes.append(run_step(step, min(step.limit_s, left), env, log))
    return outcomes


def device_name() -> str:
    """The GPU as nvidia-smi names it (this process imports no torch)."""
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or "no GPU found"
    except (OSError, subprocess.SubprocessError):
        return "no nvidia-smi"


def run(out: Path, budget_s: float, wheels: Path) -> list[Outcome]:
    """Install what is missing, run every step, and write the log and the summary into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_checks_"))
    site = scratch / "site"
    added = install_missing(wheels, site) if wheels.is_dir() else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    if added:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    with (out / LOG).open("w") as log:
        log.write(f"{device_name()}; installed from {wheels}: {', '.join(added) or 'nothing'}\n")
        outcomes = run_all(plan_steps(out, scratch), budget_s, env, log)
    steps = [{k: v for k, v in asdict(o).items() if k != "output"} for o in outcomes]
    summary = {"device": device_name(), "budget_s": budget_s, "installed": added, "steps": steps}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{json.dumps(steps)}\nlog: {out / LOG}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checks = commands.add_parser("run", help="run every GPU check into --out")
    checks.add_argument("--out", type=Path, required=True)
    checks.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all the steps together")
    checks.add_argument("--wheels", type=Path, default=GPU_KIT_DIR / "wheels", help="wheels to install where missing")
    kit = commands.add_parser("kit", help="download the wheels a GPU machine without internet needs")
    kit.add_argument("--kit", type=Path, default=GPU_KIT_DIR)
    kit.add_argument("--python", default="3.12", help="the GPU machine's Python version")
    kit.add_argument("--platforms", nargs="+", default=["manylinux2014_x86_64", "manylinux_2_28_x86_64"])
    args = parser.parse_args(argv)
    if args.command == "kit":
        print("\n".join(make_kit(args.kit, args.python, args.platforms)))
        return 0
    outcomes = run(args.out, args.budget, args.wheels)
    return 0 if all(o.returncode == 0 or o.skipped for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
