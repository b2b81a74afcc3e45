"""torchrun helpers: each rank's device, and the CUDA device bound before NCCL starts (checked on CPU by stubs)."""

import pytest
import torch
import torch.distributed as dist

from stylevid.distributed import Rank, current_rank, rank_device


@pytest.mark.parametrize(
    "device,rank,expected",
    [
        ("cuda", Rank(rank=3, world_size=4, local_rank=1), "cuda:1"),  # this node's second GPU
        ("cuda", Rank(rank=0, world_size=2, local_rank=0), "cuda:0"),
        ("cuda", Rank(), "cuda"),  # one process: the current device, as asked
        ("cuda:0", Rank(rank=1, world_size=2, local_rank=1), "cuda:0"),  # an explicit index is kept
        ("cpu", Rank(rank=1, world_size=2, local_rank=1), "cpu"),
    ],
)
def test_rank_device(device, rank, expected):
    assert rank_device(torch.device(device), rank) == torch.device(expected)


@pytest.fixture
def torchrun_rank_1_of_2(monkeypatch):
    """torchrun's environment for local rank 1, and a process group whose start is recorded, not made."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    events = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: events.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(("set_device", device)))
    return events


def test_nccl_starts_on_this_ranks_gpu(torchrun_rank_1_of_2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert current_rank() == Rank(rank=1, world_size=2, local_rank=1)
    # The device first: NCCL binds the communicator to the current device, which would otherwise be cuda:0.
    assert torchrun_rank_1_of_2 == [("set_device", 1), ("init", "nccl")]


def test_gloo_on_cpu_sets_no_device(torchrun_rank_1_of_2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_rank() == Rank(rank=1, world_size=2, local_rank=1)
    assert torchrun_rank_1_of_2 == [("init", "gloo")]
