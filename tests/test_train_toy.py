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


def test_a_few_clip_steps_lower_the_loss_on_a_held_batch(tmp_path):
    from transformers import CLIPModel

    from stylevid.training.loop import step_generator
    from stylevid.training.targets import Step
    from stylevid.training.targets.toy_clip import ToyClip

    cfg = config("toy_clip", "trainer.batch_size=8", "trainer.max_steps=6", "trainer.warmup_steps=1",
                 "trainer.cycles=1", "trainer.checkpoint_every=0", f"output_dir={tmp_path / 'run'}")
    target = ToyClip(cfg, torch.device("cpu"), torch.float32, None)
    at = Step(1000, 0, 0, 1, step_generator(1, 1000, 0, 0))  # a step the run never draws
    held = target.batch(at)
    with torch.no_grad():
        before = float(target.loss(target.clip.eval(), held, at))
    run_dir = run_train(cfg)
    with torch.no_grad():
        after = float(target.loss(CLIPModel.from_pretrained(run_dir / "clip").eval(), held, at))
    assert after < before - 0.05


def test_resume_repeats_the_uninterrupted_losses_across_a_warm_restart(tmp_path):
    """6 steps in 2 cycles of 3 (the pinned run): resumed after step 2 (mid-cycle, the next restart still ahead)
    and after step 3 (the checkpoint that closed the first cycle), the remaining losses are the uninterrupted ones."""
    pinned_run = [*PINNED_RUNS["toy_clip"], "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    run_dir, _ = train(tmp_path, "toy_clip", *pinned_run)
    uninterrupted = losses(run_dir)
    assert uninterrupted == pytest.approx(PINNED["toy_clip"], rel=1e-6)
    for step in (2, 3):
        checkpoint = run_dir / "checkpoints" / f"step_{step:07d}"
        resumed, result = train(tmp_path, "toy_clip", *pinned_run, f"trainer.resume={checkpoint}", name=f"resumed_{step}")
        assert losses(resumed) == pytest.approx(uninterrupted[step:], rel=1e-6)
        assert result["steps"] == 6


@pytest.mark.parametrize("target", ["toy_vae", "toy_t2i"])
def test_resume_repeats_the_uninterrupted_losses(tmp_path, target):
    """toy_vae keeps its latent generator's state in the checkpoint; toy_t2i draws by step: both resume exactly."""
    run = ["trainer.batch_size=1", "trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    if target == "toy_vae":
        run.append("toy.calibration_frames=8")
    run_dir, _ = train(tmp_path, target, *run)
    uninterrupted = losses(run_dir)
    resumed, result = train(tmp_path, target, *run, f"trainer.resume={run_dir / 'checkpoints' / 'step_0000001'}",
                            name="resumed")
    assert losses(resumed) == pytest.approx(uninterrupted[1:], rel=1e-6)
    assert result["steps"] == 3


def test_a_decoder_fine_tune_keeps_every_latent_and_the_scaling_factor_and_resumes(tmp_path):
    """toy.trainable=decoder from a trained VAE (toy.init_path): the decoder trains, the encoder and quant_conv stay
    the init's weight for weight (so every latent, and with them every model trained on them, stays valid), the
    scaling_factor is the init's; a resumed run repeats the uninterrupted losses."""
    from diffusers import AutoencoderKL

    from stylevid.training import toy

    init = toy.toy_vae()
    init.register_to_config(scaling_factor=0.77)
    init.save_pretrained(str(tmp_path / "init"))
    run = ["toy.trainable=decoder", f"toy.init_path={tmp_path / 'init'}", "trainer.batch_size=2", "trainer.max_steps=3",
           "toy.calibration_frames=8", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    run_dir, result = train(tmp_path, "toy_vae", *run)
    tuned = AutoencoderKL.from_pretrained(str(run_dir / "vae"))
    assert tuned.config.scaling_factor == 0.77 and result["scaling_factor"] == 0.77
    for name in ("encoder", "quant_conv", "decoder"):
        before, after = getattr(init, name).state_dict(), getattr(tuned, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before) == (name != "decoder"), name
    resumed, _ = train(tmp_path, "toy_vae", *run, f"trainer.resume={run_dir / 'checkpoints' / 'step_0000001'}",
                       name="resumed")
    assert losses(resumed) == pytest.approx(losses(run_dir)[1:], rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["toy.trainable=decoder"], "toy.trainable=decoder fine-tunes a trained VAE's decoder: pass toy.init_path="),
    (["toy.trainable=encoder"], "toy.trainable must be one of all, decoder; got 'encoder'"),
    (["toy.init_path=/nonexistent/vae"], "toy.init_path=/nonexistent/vae is not a diffusers VAE directory"),
])
def test_bad_toy_vae_settings_are_one_line(tmp_path, capsys, overrides, message):
    from conftest import run_stylevid

    code, _, err = run_stylevid(["train", "toy_vae", "device=cpu", *overrides, f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
