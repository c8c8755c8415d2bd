"""Training speed: milliseconds per optimizer step of every preset, beside the seed's settings on the same card.

Per preset, in one run on one device:

- **step**: ``engine.train_step`` (GPU augmentation, forward, backward, clipping, AdamW) on a batch that
  already sits on the device, with the preset's own settings (autocast, channels_last, no checkpointing);
- **pure**: the same step without augmentation (only the resize to the model's input), the pure-compute step;
- **loader**: the steps with augmentation fed and read back as training does it (``--workers`` loader threads,
  pinned memory, the next batch copied to the device on a side stream, the previous step's loss read) over cached
  arrays of the real shapes (256 x 256 slices, ``--slices`` per series) written to a temporary work folder;
  ``loader / pure - 1`` is what loading, the host-to-device copy and the augmentation add to the pure step
  (``step / pure - 1`` is the augmentation's own part). The timed steps come from one epoch:
  a new epoch starts the loader's prefetching again, which training does once in dozens of steps, while a cache
  of a few batches would start one every other step;
- **in-step copy** (GPU only): the same overhead (loading, copy and augmentation over the pure step) when each step
  begins by copying its own batch, as without the side stream; set beside the overhead above, it shows what the
  side stream saves;
- **seed settings**: the seed's model of the same shape with its settings (fp16, NCHW, gradient
  checkpointing, no augmentation), timed by the seed's own script when it is found (``--seed-script``, default
  ``../shared/bench/seed_shapes_gpu.py``, else ``.gpu/seed_shapes_gpu.py``), else our model with those settings.

Targets: step <= 0.5 x seed for ``fo`` and ``su``, <= 0.6 x for the others (the step with its augmentation
against the seed's step without any); loading plus augmentation add <= 10 % to the pure step.
On a machine without a GPU the same table is printed for the ``smoke`` profile's tiny backbone (the
ratios then say little; the run checks that the benchmark works).

A second table, on any machine, is the host's side of loading at the full presets' batch shapes: ms for the
loader's threads to fill one batch into a buffer that is reused, as PyTorch's pinned-memory cache reuses them on
a GPU machine, and the bytes per second. On a GPU it is set beside the compute step it has to hide behind.

Run: ``python -m kaggle_utils.dev.bench_train [--presets fo su] [--steps 8]`` or ``make bench-train``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from kaggle_utils.core import parameters
from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.constants import LEVEL_SLUGS
from kaggle_utils.core.devices import autocast_dtype
from kaggle_utils.core.paths import SEED_BENCH_SCRIPTS
from kaggle_utils.core.presets import FULL_PRESETS, preset
from kaggle_utils.core.views import view_named
from kaggle_utils.dev.bench_arrays import CACHED_SLICES, CachedArrays
from kaggle_utils.preprocessing.axial_crops import CROPS
from kaggle_utils.training.engine import StepReadout, make_optimizer, prepare_model, train_step
from kaggle_utils.training.loader import BatchLoader, DeviceBatches
from kaggle_utils.training.tasks import ClassifierTask, KeypointTask
from kaggle_utils.training.train import loader

DEFAULT_SEED_SCRIPT = next((p for p in SEED_BENCH_SCRIPTS if p.exists()), SEED_BENCH_SCRIPTS[0])
SEED_CONFIGS = {  # our preset -> the seed script's configuration of the same shape
    "stage1_t1": "stage1_s2",
    "stage1_t2": "stage1_s2",
    "fo": "stage2_s1_fo",
    "fs": "stage2_s1_fo",  # fo's shapes; its heads read half the frames twice
    "su": "stage2_s2_su",
    "sp1": "stage2_s2_sp1",
    "sp2": "stage2_s2_sp2",
}
TARGETS = {"fo": 0.5, "fs": 0.5, "su": 0.5}  # step time over seed-settings time; 0.6 for every other preset
DEFAULT_TARGET, LOADER_TARGET = 0.6, 0.10


@dataclass
class Row:
    preset: str
    shape: str
    compute_ms: float  # the training step with its augmentation, batch resident on the device
    pure_ms: float  # the same step without augmentation
    loader_ms: float  # the training step fed by the loader
    seed_ms: float | None
    seed_source: str
    peak_gb: float | None
    in_step_copy_ms: float | None = None  # loader batches copied to the device inside the step (GPU only)

    @property
    def ratio(self) -> float | None:
        return self.compute_ms / self.seed_ms if self.seed_ms else None

    @property
    def augment_overhead(self) -> float:
        return self.compute_ms / self.pure_ms - 1

    @property
    def loader_overhead(self) -> float:
        """What loading, the copy to the device and the augmentation add to the pure-compute step."""
        return self.loader_ms / self.pure_ms - 1

    @property
    def in_step_copy_overhead(self) -> float | None:
        return self.in_step_copy_ms / self.pure_ms - 1 if self.in_step_copy_ms else None

    @property
    def target(self) -> float:
        return TARGETS.get(self.preset, DEFAULT_TARGET)


# --- timing --------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Median wall time of ``step`` in ms after ``warmup`` calls (the device synchronised around each)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        started = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def loader_ms(step: Callable[[dict], object], batches: BatchLoader, device, steps, warmup) -> float:
    """Mean ms per step over ``steps`` consecutive loader batches of one epoch, waiting for data included."""
    if len(batches) < warmup + steps:
        raise ValueError(
            f"an epoch of the cached studies has {len(batches)} batches; the loader timing needs {warmup + steps} "
            "(raise --studies, or leave it out)"
        )
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(next(iterator))
    _sync(device)
    return (time.perf_counter() - started) * 1000 / steps


@dataclass
class HostRow:
    preset: str
    shape: tuple[int, ...]
    fill_ms: float
    compute_ms: float | None = None

    @property
    def megabytes(self) -> float:
        return float(np.prod(self.shape)) / 1e6

    @property
    def gigabytes_per_s(self) -> float:
        return self.megabytes / self.fill_ms


def host_fill_ms(batches: BatchLoader, batch_size: int, repeats: int) -> tuple[float, tuple[int, ...]]:
    """Median ms for the loader's threads to fill one batch of ``batch_size`` samples into a reused buffer."""
    shape = (batch_size, *batches.dataset.image_shape())
    image = np.ones(shape, np.uint8)  # touched once, then reused: no page faults, like a pinned cached buffer
    n = len(batches.dataset)
    times = []
    for k in range(repeats + 1):  # the first fill warms the pool and the page cache
        indices = [(k * batch_size + i) % n for i in range(batch_size)]
        started = time.perf_counter()
        batches.fill(indices, image, epoch=k)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:]), shape


def format_host_table(rows: list[HostRow], workers: int) -> str:
    lines = [
        f"host side of loading, full batch shapes: median ms for {workers} threads to fill a reused batch buffer",
        f"{'preset':<12} {'batch (uint8)':<26} {'MB':>6} {'fill ms':>8} {'GB/s':>6}  {'compute ms':>10} {'share':>6}",
    ]
    for r in rows:
        compute = f"{r.compute_ms:>10.1f} {r.fill_ms / r.compute_ms:>6.0%}" if r.compute_ms else f"{'-':>10} {'-':>6}"
        shape = " x ".join(map(str, r.shape))
        lines.append(
            f"{r.preset:<12} {shape:<26} {r.megabytes:>6.0f} {r.fill_ms:>8.1f} {r.gigabytes_per_s:>6.2f}  {compute}"
        )
    return "\n".join(lines)


# --- one preset ----------------------------------------------------------------------------------
def _task(cfg: TrainConfig, device: torch.device) -> KeypointTask | ClassifierTask:
    return KeypointTask(cfg, device) if cfg.stage == 1 else ClassifierTask(cfg, device)


@dataclass
class Stepper:
    """One training step of ``cfg`` on a given batch, as the loop takes it: a fresh model and optimizer, the
    config's autocast type and (for fp16) the grad scaler. ``model`` and ``task`` stay reachable, to evaluate."""

    cfg: TrainConfig
    model: torch.nn.Module
    task: KeypointTask | ClassifierTask
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device) -> Stepper:
        model = prepare_model(cfg, device).train()
        dtype = autocast_dtype(device, cfg.amp, cfg.amp_dtype)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(cfg, model, _task(cfg, device), make_optimizer(model, cfg, device), scaler, dtype)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(self.model, self.task, batch, self.optimizer, self.scaler, self.dtype, self.cfg.grad_clip)


def pure_ms(cfg: TrainConfig, batch: dict, device: torch.device, steps: int, warmup: int) -> float:
    """The training step without augmentation (its own model and optimizer, freed on return)."""
    step = Stepper.build(replace(cfg, augment=False), device)
    return median_ms(lambda: step(batch), device, steps, warmup)


def reading_back(step: Callable[[dict], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[dict], None]:
    """``step`` followed by what the training loop does after it: read the previous step's loss and gradient norm
    (``engine.StepReadout``), so the host runs as far ahead of the device as it does in training."""
    pending: list[StepReadout] = []

    def fed(batch: dict) -> None:
        readout = StepReadout(*step(batch))
        if pending:
            pending.pop().read()
        pending.append(readout)

    return fed


def peak_memory_gib(device: torch.device) -> float | None:
    """The peak memory allocated on ``device`` since the last ``reset_memory``, in GiB (None off a GPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    """Return cached blocks to the card and restart the peak count."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def seed_settings_ms(
    cfg: TrainConfig, data: CachedArrays, device: torch.device, seed_script: ModuleType | None, steps: int, warmup: int
) -> tuple[float, str]:
    """The seed settings for the same shape: its own script on a GPU, else (or for a preset the seed does not have,
    the axial ones) our model with its settings."""
    if seed_script is not None and device.type == "cuda" and cfg.name in SEED_CONFIGS:
        name, levels, frames, size, heads, lstm = next(c for c in seed_script.CONFIGS if c[0] == SEED_CONFIGS[cfg.name])
        model = seed_script.SeqNet(cfg.backbone, heads, lstm, ckpt=True).to(device).train()
        x = torch.randn(cfg.batch_size, levels, frames, 1, size, size, device=device)
        mask = torch.ones(cfg.batch_size, frames, dtype=torch.bool, device=device)
        median, _, _ = seed_script.time_steps(model, x, mask, torch.float16, False, steps=steps, warm=warmup)
        return median, f"seed script ({name})"
    seed_cfg = replace(cfg, amp_dtype="fp16", channels_last=False, grad_checkpointing=True, augment=False)
    step, batch = Stepper.build(seed_cfg, device), data.first_batch(seed_cfg, device)
    return median_ms(lambda: step(batch), device, steps, warmup), "our model, seed settings"


def bench_preset(
    cfg: TrainConfig, data: CachedArrays, device: torch.device, seed_script: ModuleType | None, steps: int, warmup: int
) -> Row:
    reset_memory(device)
    step, resident = Stepper.build(cfg, device), data.first_batch(cfg, device)
    compute = median_ms(lambda: step(resident), device, steps, warmup)
    peak = peak_memory_gib(device)
    pure = pure_ms(cfg, resident, device, steps, warmup)
    fed_step = reading_back(step)
    fed = loader_ms(fed_step, DeviceBatches(loader(data.training_set(cfg), cfg, True), device), device, steps, warmup)
    in_step = None
    if device.type == "cuda":  # the same without the side stream: each step starts with its batch's copy
        in_step = loader_ms(fed_step, loader(data.training_set(cfg), cfg, True), device, steps, warmup)
    reset_memory(device)
    seed, source = seed_settings_ms(cfg, data, device, seed_script, steps, warmup)
    return Row(cfg.name, batch_shape(cfg), compute, pure, fed, seed, source, peak, in_step)


def batch_shape(cfg: TrainConfig) -> str:
    """A training batch as the model sees it: batch x [levels or axial crops x] frames x pixels."""
    per_level = view_named(cfg.view).localised_per == "level"
    levels = "" if cfg.stage == 1 else f"{len(CROPS)} x " if per_level else f"{len(LEVEL_SLUGS)} x "
    return f"{cfg.batch_size} x {levels}{cfg.n_frames} x {cfg.img_size}px"


# --- report --------------------------------------------------------------------------------------
def format_table(rows: list[Row], device: str) -> str:
    lines = [
        f"training step, {device}: median ms per optimizer step, batch resident on the device (step: with the GPU "
        "augmentation; pure: without), and fed by the loader; overheads are over the pure step",
        f"{'preset':<12} {'batch shape':<26} {'seed ms':>9} {'step ms':>9} {'ratio':>6} {'target':>7}  "
        f"{'pure ms':>8} {'augment':>8} {'+loader ms':>10} {'overhead':>8}     {'in-step copy':>12}  {'peak GB':>7}"
        "  seed timed by",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        verdict = "ok" if r.ratio and r.ratio <= r.target else "MISS"
        loaded = "ok" if r.loader_overhead <= LOADER_TARGET else "MISS"
        in_step = f"{r.in_step_copy_overhead:>+12.1%}" if r.in_step_copy_overhead is not None else f"{'-':>12}"
        lines.append(
            f"{r.preset:<12} {r.shape:<26} {r.seed_ms or 0:>9.1f} {r.compute_ms:>9.1f} {ratio:>6} "
            f"{'<=' + str(r.target):>5} {verdict:<4} {r.pure_ms:>8.1f} {r.augment_overhead:>+8.1%} "
            f"{r.loader_ms:>10.1f} {r.loader_overhead:>+8.1%} {loaded:<4} {in_step}  {r.peak_gb or 0:>7.1f}  "
            f"{r.seed_source}"
        )
    return "\n".join(lines)


def load_seed_script(path: Path) -> ModuleType | None:
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("seed_shapes_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines models and timers; its main() is not run
    return module


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description="Training step time per preset against the seed's settings.")
    parser.add_argument("--presets", nargs="+", default=list(FULL_PRESETS))
    parser.add_argument("--profile", default="auto", help="full on a GPU, smoke on the CPU (default)")
    parser.add_argument("--steps", type=int, help="timed steps (default 8 on a GPU, 2 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3 on a GPU, 1 on the CPU)")
    parser.add_argument("--workers", type=int, default=4, help="loader threads")
    parser.add_argument("--studies", type=int, default=0, help="cached studies (default: enough for the steps)")
    parser.add_argument("--slices", type=int, default=CACHED_SLICES, help="slices per cached series")
    parser.add_argument("--seed-script", type=Path, default=DEFAULT_SEED_SCRIPT)
    parser.add_argument("--host-batches", type=int, default=5, help="batches timed for the host table (0: none)")
    parameters.add_override_arguments(parser)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    profile = args.profile if args.profile != "auto" else ("full" if gpu else "smoke")
    steps, warmup = args.steps or (8 if gpu else 2), args.warmup if args.warmup is not None else (3 if gpu else 1)
    overrides = {"num_workers": args.workers, "pretrained": False, **parameters.parsed_overrides(args)}
    configs = [preset(name, profile, overrides) for name in args.presets]
    seed_script = load_seed_script(args.seed_script) if device.type == "cuda" else None
    full = [preset(name, "full", overrides) for name in args.presets]  # the host table's batch shapes
    batch = max(c.batch_size for c in (configs + full if args.host_batches else configs))
    n_studies = args.studies or batch * (warmup + steps + 1)  # the timed loader steps within one epoch
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = CachedArrays.write(Path(tmp), n_studies, args.slices)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(
            f"{name}, torch {torch.__version__}, profile {profile}, {n_studies} cached studies, {args.workers} workers"
        )
        print(f"seed settings timed by: {args.seed_script if seed_script else 'our model (no seed script here)'}")
        for cfg in configs:
            rows.append(bench_preset(cfg, data, device, seed_script, steps, warmup))
            print(format_table(rows[-1:], name).splitlines()[-1], flush=True)
        print()
        print(format_table(rows, name))
        if args.host_batches:
            host = [host_row(cfg, data, args.host_batches, rows, profile) for cfg in full]
            print()
            print(format_host_table(host, args.workers))
    return rows


def host_row(cfg: TrainConfig, data: CachedArrays, repeats: int, rows: list[Row], profile: str) -> HostRow:
    batches = loader(data.training_set(cfg), cfg, train=True)
    try:
        fill, shape = host_fill_ms(batches, cfg.batch_size, repeats)
    finally:
        batches.close()
    compute = next((r.compute_ms for r in rows if r.preset == cfg.name), None) if profile == "full" else None
    return HostRow(cfg.name, shape, fill, compute)


if __name__ == "__main__":
    main(sys.argv[1:])
