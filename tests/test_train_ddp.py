"""Two DDP ranks on the CPU (gloo): only motion weights change, the ranks agree, only rank 0 writes."""

import json
import multiprocessing
import os
import socket

import torch
import torch.multiprocessing as mp

from stylevid.data.toy import write_toy_videos

OVERRIDES = [
    "target=motion_module",
    "model=tiny", "data=folder", "data.frames=4", "data.stride=2", "data.size=32", "data.num_workers=0",
    "trainer.batch_size=1", "trainer.grad_accum=2", "trainer.lr=1e-3", "trainer.log_every=1", "trainer.max_steps=2",
    "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.checkpoint_every=0",
    "motion.num_attention_heads=2", "device=cpu",
]


# What every rank imports, loaded once into a forkserver that forks the ranks. A spawned rank imports torch, diffusers
# and transformers afresh (about 5 s here), which every two-rank test paid once per rank; the forkserver only imports
# (no OpenMP pool, gloo group or model exists in it), so what it forks starts clean.
RANK_PRELOAD = ["torch", "diffusers", "transformers", "hydra", "stylevid.train", "stylevid.training.loop"]


def spawn_ranks(worker, args: tuple, nprocs: int = 2) -> None:
    """`torch.multiprocessing.spawn(worker, args, nprocs)`, each rank forked from the preloaded forkserver (every
    registered training target's module too: their diffusers classes load lazily)."""
    from stylevid.training.targets import registered_targets

    targets = sorted({target.__module__ for target in registered_targets().values()})
    multiprocessing.set_forkserver_preload([*RANK_PRELOAD, *targets])
    mp.start_processes(worker, args=args, nprocs=nprocs, join=True, start_method="forkserver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    import torch.distributed as dist
    from hydra import compose, initialize_config_module

    from stylevid.models.tiny import tiny_unet
    from stylevid.train import run_train

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    # run_train joins the process group from the environment, trains, and (rank 0) writes the run.
    import stylevid.training.loop as loop

    trainers = []
    original_init = loop.Trainer.__init__

    def remember(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        trainers.append(self)

    loop.Trainer.__init__ = remember
    run_dir = run_train(cfg)
    trainer = trainers[0].target
    image_unet = tiny_unet(0).state_dict()
    frozen_same = all(
        torch.equal(value, image_unet[key])
        for key, value in trainer.unet.state_dict().items()
        if ".motion_modules." not in f".{key}" and key in image_unet
    )
    torch.save({"run_dir": str(run_dir), "motion": {k: v for k, v in trainer.unet.state_dict().items() if "motion_modules" in k},
                "frozen_same": frozen_same, "losses": trainers[0].losses}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_on_cpu_agree_and_train_only_motion_weights(tmp_path):
    videos = tmp_path / "videos"
    write_toy_videos(videos, count=4, frames=10, size=32)
    out = tmp_path / "ranks"
    out.mkdir()
    run_dir = tmp_path / "run"
    overrides = OVERRIDES + [f"data.video_folder={videos}", f"output_dir={run_dir}"]
    spawn_ranks(worker, (2, free_port(), overrides, str(out)))

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["run_dir"] == rank1["run_dir"] == str(run_dir)  # chosen by rank 0, broadcast
    assert rank0["frozen_same"] and rank1["frozen_same"]
    assert all(torch.equal(rank0["motion"][k], rank1["motion"][k]) for k in rank0["motion"])
    assert rank0["losses"] == rank1["losses"]  # the logged loss is the mean over ranks
    from stylevid.models.motion_module import tiny_motion_adapter

    initial = tiny_motion_adapter(seed=0).state_dict()
    changed = [k for k, v in rank0["motion"].items() if k in initial and not torch.equal(v, initial[k])]
    assert any("proj_out" in k for k in changed)  # adapter and inflated-UNet motion keys coincide
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs
