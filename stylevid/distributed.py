"""torchrun support for every task: who am I, the shared run directory, gathering results on rank 0, and the
means the trainer logs.

Outside torchrun everything here is a no-op with rank 0 of 1, so single-process code needs no branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current_rank(device: torch.device | None = None) -> Rank:
    """Read torchrun's environment; initialise the process group once: NCCL when the task runs on CUDA (`device`,
    or any GPU being there when the task has not resolved its device yet), gloo otherwise (`device=cpu` on a GPU
    machine included: its collectives then stay on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        if on_cuda:
            # NCCL binds each rank's communicator to the current CUDA device, and object collectives
            # (broadcast_object_list, gather_object) stage through it: unset, every rank would use cuda:0.
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return Rank(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """Each rank on its own GPU (cuda:LOCAL_RANK) when the run asks for CUDA without an index (device=cuda, or
    auto on a GPU machine); an explicit cuda:N or cpu is kept as given."""
    if device.type == "cuda" and device.index is None and rank.world_size > 1:
        return torch.device("cuda", rank.local_rank)
    return device


def broadcast_from_main(value, rank: Rank):
    """Rank 0's `value` on every rank (e.g. the run directory it chose)."""
    if rank.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(value, rank: Rank) -> list | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    if rank.world_size == 1:
        return [value]
    gathered = [None] * rank.world_size if rank.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def mean_over_ranks(value: float, rank: Rank) -> float:
    """The mean of every rank's `value` (e.g. the loss the trainer logs), on every rank."""
    if not rank.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / rank.world_size


def sum_over_ranks(value: int, rank: Rank) -> int:
    return int(round(mean_over_ranks(float(value), rank) * rank.world_size)) if rank.enabled else value


def shard(items: list, rank: Rank) -> list:
    """Rows i with i % world_size == rank: an even spread that keeps each row on one rank."""
    return items[rank.rank :: rank.world_size]


def close_process_group() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can still be joinable when their C++ destructors run,
    and a rank then aborts ("terminate called without an active exception", SIGABRT) after its work is done.
    The barrier keeps a fast rank from leaving while rank 0 still gathers from it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
