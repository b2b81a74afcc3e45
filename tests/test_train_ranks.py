"""Every target under two gloo ranks on the CPU: identical weights on both ranks after several steps, a different
shard on each rank, and the logged loss is the mean of the ranks' own losses."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from test_train_ddp import free_port, spawn_ranks

from stylevid.data.toy import write_toy_videos


def write_images(folder, count=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"img_{index}.png")


def data_for(target, tmp_path) -> list[str]:
    if target == "motion_module":
        write_toy_videos(tmp_path / "videos", count=4, frames=10, size=32)
        return ["experiment=tiny_motion", f"data.video_folder={tmp_path / 'videos'}", "trainer.batch_size=1"]
    if target == "lora":
        write_images(tmp_path / "images")
        return ["experiment=tiny_lora", f"data.folder={tmp_path / 'images'}", "data.caption=a photo of sks dog",
                "trainer.batch_size=1"]
    return ["device=cpu", "trainer.batch_size=2", "toy.calibration_frames=8"] if target == "toy_vae" else [
        "device=cpu", "trainer.batch_size=2"]


def worker(rank, world_size, port, overrides, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    import torch.distributed as dist
    from hydra import compose, initialize_config_module

    import stylevid.training.loop as loop
    from stylevid.train import run_train

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    trainers, own_losses, batches = [], [], []
    original_init, original_mean = loop.Trainer.__init__, loop.mean_over_ranks

    def remember(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        trainers.append(self)
        target_loss = self.target.loss

        def recording_loss(model, batch, at):  # what this rank trained on, as a fingerprint
            tensors = [v for v in (batch.values() if isinstance(batch, dict) else batch) if torch.is_tensor(v)]
            batches.append(float(sum(t.double().abs().sum() for t in tensors if t.is_floating_point())))
            return target_loss(model, batch, at)

        self.target.loss = recording_loss

    def recording_mean(value, ctx):
        own_losses.append(value)
        return original_mean(value, ctx)

    loop.Trainer.__init__, loop.mean_over_ranks = remember, recording_mean
    run_train(cfg)
    trainer = trainers[0]
    weights = {k: v.detach().clone() for k, v in trainer.target.model.state_dict().items()}
    torch.save({"weights": weights, "logged": trainer.losses, "own": own_losses, "batches": batches,
                "trainable": [p.detach().clone() for p in trainer.trainable]}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("target", ["motion_module", "lora", "toy_vae", "toy_clip", "toy_t2i"])
def test_two_ranks_hold_identical_weights_see_different_shards_and_log_the_mean_loss(target, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"target={target}", *data_for(target, tmp_path), "trainer.max_steps=3", "trainer.log_every=1",
                 "trainer.checkpoint_every=0", "trainer.tensorboard=false", f"output_dir={run_dir}"]
    out = tmp_path / "ranks"
    out.mkdir()
    spawn_ranks(worker, (2, free_port(), overrides, str(out)))
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["weights"].keys() == rank1["weights"].keys()
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert len(rank0["batches"]) == len(rank1["batches"]) >= 3  # one per micro-batch
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"]))  # each rank its own shard
    assert rank0["own"] != rank1["own"]
    means = [(a + b) / 2 for a, b in zip(rank0["own"], rank1["own"])]
    assert rank0["logged"] == pytest.approx(means, rel=1e-9) and rank1["logged"] == rank0["logged"]
    logged = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(means, rel=1e-9)
    assert json.loads((run_dir / "result.json").read_text())["world_size"] == 2
