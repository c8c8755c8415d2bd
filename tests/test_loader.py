"""The threaded batch loader: order, contents, random choices independent of threads, errors named."""

from __future__ import annotations

import gc
import sys
import time
import weakref

import numpy as np
import pytest
import torch

from kaggle_utils.training.loader import BatchLoader, DeviceBatches, collate, to_device


class Numbers:
    """Sample i: an image full of i plus a random draw (to see the per-sample generator), and its index."""

    def __init__(self, n: int, broken: int | None = None) -> None:
        self.n, self.broken = n, broken

    def __len__(self) -> int:
        return self.n

    def image_shape(self) -> tuple[int, ...]:
        return (3, 4, 2)

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        if index == self.broken:
            raise ValueError(f"sample {index}: unreadable")
        image[...] = index
        return {"index": index, "draw": rng.random(), "mask": np.array([True, index % 2 == 0])}


class Epochs:
    """A sampler with an epoch attribute, like DistributedSampler."""

    def __init__(self, order: list[int], epoch: int = 0) -> None:
        self.order, self.epoch = order, epoch

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@pytest.mark.parametrize("workers", [0, 3])
def test_batches_follow_the_sampler_and_hold_each_sample_in_its_row(workers: int) -> None:
    order = [4, 0, 6, 2, 5, 1, 3]
    loader = BatchLoader(Numbers(7), batch_size=3, sampler=Epochs(order), workers=workers, pin_memory=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b["index"].tolist() for b in batches] == [[4, 0, 6], [2, 5, 1], [3]]
    for batch in batches:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 4, 2)
        for row, index in enumerate(batch["index"].tolist()):
            assert (batch["image"][row] == index).all()
        assert batch["mask"].shape == (len(batch["index"]), 2)
    assert len(BatchLoader(Numbers(7), batch_size=3, drop_last=True, workers=workers)) == 2


def test_random_draws_depend_on_seed_epoch_and_index_not_on_threads() -> None:
    def draws(workers: int, epoch: int, seed: int = 0) -> dict[int, float]:
        loader = BatchLoader(Numbers(8), 3, sampler=Epochs(list(range(8)), epoch), workers=workers, seed=seed)
        return {i: d for b in loader for i, d in zip(b["index"].tolist(), b["draw"].tolist(), strict=True)}

    assert draws(0, epoch=1) == draws(4, epoch=1)
    assert draws(0, epoch=1) != draws(0, epoch=2)
    assert draws(0, epoch=1) != draws(0, epoch=1, seed=1)


def test_a_failing_sample_raises_its_own_error() -> None:
    loader = BatchLoader(Numbers(6, broken=4), batch_size=2, workers=2, pin_memory=False)
    with pytest.raises(ValueError, match="sample 4: unreadable"):
        list(loader)


def test_collate_stacks_arrays_and_numbers_and_lists_the_rest() -> None:
    out = collate([{"a": np.zeros(2), "n": 1, "s": "x"}, {"a": np.ones(2), "n": 2, "s": "y"}])
    assert out["a"].shape == (2, 2) and out["n"].tolist() == [1, 2] and out["s"] == ["x", "y"]


class Slow(Numbers):
    """Samples that take a while, so that loads are still queued when the loader is dropped."""

    def fill(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict:
        time.sleep(0.05)
        return super().fill(index, image, rng)


def test_a_loader_dropped_mid_epoch_is_freed_at_once_and_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Queued loads must not hold the loader: freed in a loader thread, it would try to join that thread.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    loader = BatchLoader(Slow(40), batch_size=2, workers=2, prefetch=4, pin_memory=False)
    batches = iter(loader)
    next(batches)
    alive = weakref.ref(loader)
    del loader, batches
    gc.collect()
    assert alive() is None
    time.sleep(0.3)  # the threads finish their current samples
    assert unraisable == []


def test_fill_writes_given_samples_into_a_given_buffer() -> None:
    loader = BatchLoader(Numbers(5), batch_size=2, workers=2, pin_memory=False)
    image = np.zeros((3, *Numbers(5).image_shape()), np.uint8)
    records = loader.fill([4, 1, 4], image, epoch=1)
    loader.close()
    assert [r["index"] for r in records] == [4, 1, 4] and image[:, 0, 0, 0].tolist() == [4, 1, 4]
    assert records[0]["draw"] == records[2]["draw"]  # the same sample in the same epoch draws the same


def test_device_batches_move_every_tensor_and_keep_the_rest() -> None:
    batches = list(BatchLoader(Numbers(5), batch_size=2, workers=0, pin_memory=False))
    moved = DeviceBatches(batches, torch.device("cpu"))
    assert len(moved) == 3
    for _ in range(2):  # as often as the batches can be iterated
        out = list(moved)
        assert [b["index"].tolist() for b in out] == [[0, 1], [2, 3], [4]]
        assert all(torch.equal(b["image"], a["image"]) for a, b in zip(batches, out, strict=True))
    # on a device (here the meta device, which holds no data): identifiers stay on the host, lists as they are
    moved = to_device({"image": torch.ones(2, 3), "series_id": torch.tensor([7, 8]), "s": ["x"]}, torch.device("meta"))
    assert moved["image"].is_meta and not moved["series_id"].is_meta and moved["s"] == ["x"]
    assert list(moved) == ["image", "series_id", "s"]  # the batch's order, whatever the order of the copies


class Large(Numbers):
    """Samples of 16 MB, so that a batch's copy to the device takes a while."""

    def image_shape(self) -> tuple[int, ...]:
        return (64, 512, 512)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy needs a GPU")
def test_device_batches_on_a_gpu_are_whole_when_the_step_reads_them() -> None:
    device = torch.device("cuda")
    batches = list(BatchLoader(Large(9), batch_size=2, workers=2, pin_memory=True))
    busy = torch.randn(2048, 2048, device=device)
    sums = []
    for batch in DeviceBatches(batches, device):
        assert batch["image"].is_cuda and batch["index"].is_cuda
        sums.append(batch["image"].sum(dtype=torch.int64))  # read at once, while the next copy is queued
        for _ in range(10):  # keep the main stream busy while the next batch is copied
            busy = (busy @ busy).clamp_(-1, 1)
    assert [int(t) for t in sums] == [int(b["image"].sum(dtype=torch.int64)) for b in batches]
