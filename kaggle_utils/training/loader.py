"""Batches for the training loop: a pool of threads reads every sample straight into one batch buffer.

A ``DataLoader`` with worker processes copies a batch three times on the host (the sample arrays, their stack
in a worker's fresh shared memory, and that again into pinned memory), and the page faults of fresh shared
memory cost about as much as the copies; a batch of the 24-frame stage-2 presets is 252 MB. Here threads
(NumPy releases the GIL while it copies) fill a buffer taken from PyTorch's pinned-memory cache, which
reuses it once the device has copied it, so a batch costs one copy of its bytes.

Random choices (the sequence flip, which series of a study) come from a generator seeded with
(seed, epoch, index): a sample does not depend on which thread loads it, and a resumed run draws what the
uninterrupted one did.

``DeviceBatches`` moves the batches to the device; on a GPU it copies the next batch on a side stream while the
current step computes, so the step does not wait for the bus (a 24-frame stage-2 batch is 252 MB of uint8).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch


class SampleSource(Protocol):
    """A dataset that writes a sample's image into a given array and returns the rest of the sample."""

    def __len__(self) -> int: ...

    def image_shape(self) -> tuple[int, ...]: ...

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]: ...


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random choices of one sample in one epoch."""
    return np.random.default_rng((seed, epoch, index))


class BatchLoader:
    """Batches of ``dataset`` in the order of ``sampler`` (default: 0..n-1), ``prefetch`` batches ahead.

    A batch is a dict: ``image`` (B, *image_shape) uint8 (pinned when a GPU is present), the other entries of
    the samples stacked as tensors where they are arrays or numbers. ``workers`` threads load the samples;
    0 loads them in the calling thread.
    """

    def __init__(
        self,
        dataset: SampleSource,
        batch_size: int,
        sampler: Any = None,
        drop_last: bool = False,
        workers: int = 4,
        prefetch: int = 2,
        seed: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.sampler, self.drop_last = dataset, batch_size, sampler, drop_last
        self.workers, self.prefetch, self.seed = workers, prefetch, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[list[int]]:
        indices = list(self.sampler) if self.sampler is not None else list(range(len(self.dataset)))
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return batches[: len(self)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = getattr(self.sampler, "epoch", 0)
        pending: deque[tuple[torch.Tensor, list[Future | dict]]] = deque()
        for indices in self._batches():
            pending.append(self._start(indices, epoch))
            if len(pending) > self.prefetch:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    def _start(self, indices: Sequence[int], epoch: int) -> tuple[torch.Tensor, list[Future | dict]]:
        """Allocate the batch buffer and queue (or, without workers, do) the loading of its samples."""
        image = torch.empty((len(indices), *self.dataset.image_shape()), dtype=torch.uint8, pin_memory=self.pin_memory)
        return image, self._submit(indices, image.numpy(), epoch)

    def _submit(self, indices: Sequence[int], slots: np.ndarray, epoch: int) -> list[Future | dict]:
        dataset, seed = self.dataset, self.seed  # not ``self``: a loader must never be freed in its own thread

        def load(row: int) -> dict[str, Any]:
            index = indices[row]
            return dataset.fill(index, slots[row], sample_rng(seed, epoch, index))

        if self.workers <= 0:
            return [load(row) for row in range(len(indices))]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="loader")
        return [self._pool.submit(load, row) for row in range(len(indices))]

    def fill(self, indices: Sequence[int], image: np.ndarray, epoch: int = 0) -> list[dict[str, Any]]:
        """Load the samples ``indices`` into a given batch buffer with the loader's threads; returns their other
        entries. What a batch costs the host, without allocating its buffer (benchmarks)."""
        return _results(self._submit(indices, image, epoch))

    @staticmethod
    def _finish(image: torch.Tensor, samples: list[Future | dict]) -> dict[str, Any]:
        return {"image": image, **collate(_results(samples))}

    def close(self, wait: bool = True) -> None:
        """Stop the threads; batches already queued are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        self.close(wait=False)  # never block a garbage collection; the threads end after their current sample


class DeviceBatches:
    """The batches of ``batches`` with their tensors on ``device``, one batch ahead on a GPU.

    On a GPU, the copy of batch k + 1 is queued on a side stream before step k is queued on the main stream, so
    the two overlap; the main stream waits for a batch's copy only when it takes the batch. Elsewhere a batch is
    moved when it is taken.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield to_device(batch, self.device)
            return
        copies, steps = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        batches = iter(self.batches)
        ahead = _ship(next(batches, None), self.device, copies)
        while ahead is not None:
            steps.wait_stream(copies)  # only this batch's copy is queued there yet
            for value in ahead.values():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    # made on the side stream, used on the main one: not to be reused before the step is done
                    value.record_stream(steps)
            batch, ahead = ahead, _ship(next(batches, None), self.device, copies)
            yield batch


HOST_KEYS = frozenset({"study_id", "series_id"})
"""Batch entries that stay on the host: identifiers, read back one by one to label predictions."""


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device`` (asynchronous from pinned memory), but for ``HOST_KEYS``; other
    entries as they are.

    The smallest tensors go first: a copy from pageable memory (masks, targets) may wait for the copies queued
    before it on its stream, and should not wait for the image.
    """
    moved = {
        k: v.to(device, non_blocking=True)
        for k, v in sorted(batch.items(), key=lambda item: _numel(item[1]))
        if isinstance(v, torch.Tensor) and k not in HOST_KEYS
    }
    return {k: moved.get(k, v) for k, v in batch.items()}


def _numel(value: Any) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def _ship(batch: dict[str, Any] | None, device: torch.device, stream: torch.cuda.Stream) -> dict[str, Any] | None:
    """Queue the batch's copy to ``device`` on ``stream``."""
    if batch is None:
        return None
    with torch.cuda.stream(stream):
        return to_device(batch, device)


def _results(samples: list[Future | dict]) -> list[dict[str, Any]]:
    """The samples' other entries, waiting for those still loading in a thread."""
    return [s.result() if isinstance(s, Future) else s for s in samples]


def collate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the entries of sample dicts: arrays and numbers become tensors, anything else a list."""
    out: dict[str, Any] = {}
    for key in records[0]:
        values = [r[key] for r in records]
        if isinstance(values[0], np.ndarray):
            out[key] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float, np.integer, np.floating)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
