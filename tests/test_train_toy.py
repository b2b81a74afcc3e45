"""The toy world's three models on the one loop (`stylevid train toy_vae | toy_clip | toy_t2i`).

The per-step losses below were recorded from the toy world's own loops (`training.toy.train_vae`, `train_clip`,
`train_unet`, which built the shipped weights) before they were replaced by these targets, on tiny runs:
  vae:  train_vae(steps=3, batch_size=2)
  clip: train_clip(steps=3, batch_size=4, cycles=2)            (6 steps across one warm restart)
  unet: train_unet(packaged VAE + CLIP text tower, steps=3, batch_size=2, cycles=2)
`stylevid train` must repeat them, so that the shipped weights are what the targets build.
"""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from stylevid.train import run_train

PINNED = {
    "toy_vae": [0.35403531789779663, 0.29635217785835266, 0.2708260416984558],
    "toy_clip": [2.6900508403778076, 2.806547164916992, 2.50616192817688, 2.9396562576293945, 2.4362754821777344,
                 2.8254587650299072],
    "toy_t2i": [1.209930181503296, 1.2242838144302368, 1.1420375108718872, 1.1343986988067627, 1.2146791219711304,
                1.1184724569320679],
}
PINNED_RUNS = {
    "toy_vae": ["trainer.batch_size=2", "trainer.max_steps=3", "toy.calibration_frames=8"],
    "toy_clip": ["trainer.batch_size=4", "trainer.max_steps=6", "trainer.cycles=2"],
    "toy_t2i": ["trainer.batch_size=2", "trainer.max_steps=6", "trainer.cycles=2"],
}


def config(target: str, *overrides: str):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=[f"target={target}", "device=cpu", "trainer.log_every=1", *overrides])


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train(tmp_path, target: str, *overrides: str, name: str = "run"):
    run_dir = run_train(config(target, f"output_dir={tmp_path / name}", *overrides))
    return run_dir, json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize("target", list(PINNED))
def test_the_old_toy_loops_losses_are_repeated(tmp_path, target):
    run_dir, result = train(tmp_path, target, *PINNED_RUNS[target], "trainer.checkpoint_every=0")
    assert losses(run_dir) == pytest.approx(PINNED[target], rel=1e-6)
    assert result["target"] == target
