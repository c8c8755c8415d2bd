"""Multi-GPU training with ``torchrun``: the process group, this process's place in it, and its device.

``torchrun --nproc_per_node=N -m kaggle_utils.training.train ...`` starts N processes and describes them in the
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). ``init`` joins the group (NCCL on GPUs, gloo on the
CPU); without ``torchrun`` everything here describes a single process and nothing else changes. The
configured batch size is the global one, split evenly over the processes, so N processes take the same
optimizer steps as one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the group: rank 0 evaluates, logs and writes the files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def per_process(self, batch_size: int) -> int:
        """This process's share of a global batch size (it must divide evenly)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} does not split over {self.world_size} processes")
        return batch_size // self.world_size


def context() -> Context:
    """The current group, or a single process when none was joined."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init() -> Context:
    """Join the group that ``torchrun`` describes in the environment; a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return context()
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return context()


def barrier() -> None:
    """Wait for every process (e.g. while rank 0 evaluates or writes); nothing for a single process."""
    if context().world_size > 1:
        dist.barrier()


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
