"""Training VideoGen's cascade stages (`stylevid train videogen_base | videogen_sr`) on the tiny model and toy clips.

The base stage trains at 16 px (2x2 latents), the super-resolution stage above it at 32 px (4x4 latents), 4 frames.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from stylevid.data.toy import write_toy_videos
from stylevid.data.videos import ClipSpec, VideoClipDataset, collate_clips, folder_records
from stylevid.errors import UserInputError
from stylevid.io.video import write_video
from stylevid.models.videogen import load_stage, read_stage_info
from stylevid.train import run_train
from stylevid.training.loop import step_generator
from stylevid.training.targets import Step

TINY = ["model=tiny", "data=folder", "device=cpu", "data.frames=4", "data.stride=2", "data.num_workers=0",
        "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.lr=1e-3", "trainer.log_every=1",
        "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.tensorboard=false",
        "trainer.lr_scheduler=constant", "trainer.warmup_steps=0"]
BASE = ["target=videogen_base", "data.size=16", "videogen.max_frames=8", *TINY]
SR = ["target=videogen_sr", "data.size=32", *TINY]


def config(overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_toy_videos(folder, count=4, frames=10, size=32)
    return folder


@pytest.fixture(scope="module")
def base_run(videos, tmp_path_factory):
    """Three base steps with a checkpoint after each (the SR stage's init, the resume test's uninterrupted run)."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    run_train(config([*BASE, f"data.video_folder={videos}", "trainer.max_steps=3", "trainer.checkpoint_every=1",
                      "trainer.keep_checkpoints=0", f"output_dir={run_dir}"]))
    return run_dir


def target(cls_name, overrides):
    from stylevid.training.targets import get_target

    cfg = config(overrides)
    return cfg, get_target(cls_name)(cfg, torch.device("cpu"), torch.float32, None)


def held_batch(stage_target):
    """Two clips and a generator the runs never draw (step 1000): a fixed batch with fixed noise."""
    items = [stage_target.videos[i] for i in range(2)]
    return collate_clips(items), Step(1000, 0, 0, 1, step_generator(7, 1000, 0, 0))


def held_loss(stage_target, model, batch) -> float:
    data, at = batch
    at = Step(at.step, at.micro, at.rank, at.world_size, step_generator(7, 1000, 0, 0))  # the same draws every time
    with torch.no_grad():
        return float(stage_target.loss(model.eval(), data, at))


# --- data --------------------------------------------------------------------------------------------------------


def test_clips_carry_their_frame_rate_source_fps_over_stride(tmp_path):
    frames = np.zeros((30, 32, 32, 3), dtype=np.uint8)
    frames[:, 8:16, 8:16] = 200
    for name, fps in (("a", 24), ("b", 10)):
        write_video(tmp_path / f"{name}.mp4", frames, fps=fps)
        (tmp_path / f"{name}.txt").write_text(f"clip {name}\n")
    dataset = VideoClipDataset(folder_records(tmp_path), ClipSpec(frames=4, stride=3, size=32), seed=0)
    items = [dataset[0], dataset[1]]
    assert [item["fps"] for item in items] == pytest.approx([8.0, 10 / 3], rel=1e-3)
    batch = collate_clips(items)
    assert batch["fps"].dtype == torch.float32 and batch["fps"].tolist() == pytest.approx([8.0, 10 / 3], rel=1e-3)
    assert batch["pixel_values"].shape == (2, 4, 3, 32, 32) and batch["captions"] == ["clip a", "clip b"]


# --- the base stage -------------------------------------------------------------------------------------------


def test_base_steps_lower_the_loss_on_a_held_batch(videos, base_run):
    _, base = target("videogen_base", [*BASE, f"data.video_folder={videos}"])
    batch = held_batch(base)
    before = held_loss(base, base.unet, batch)
    after = held_loss(base, load_stage(base_run / "videogen_stage"), batch)
    assert np.isfinite(before) and after < 0.95 * before, (before, after)
    info = read_stage_info(base_run)
    assert (info.index, info.latent_size, info.frames) == (1, 2, 4) and info.base_model["name"] == "tiny"
    result = json.loads((base_run / "result.json").read_text())
    assert result["files"]["diffusers"] == "videogen_stage/" and result["stage"]["kind"] == "base"


def test_base_resume_repeats_the_uninterrupted_losses_and_weights(videos, base_run, tmp_path):
    resumed = run_train(config([*BASE, f"data.video_folder={videos}", "trainer.max_steps=3", "trainer.checkpoint_every=1",
                                f"trainer.resume={base_run / 'checkpoints' / 'step_0000001'}", f"output_dir={tmp_path / 'r'}"]))
    assert losses(resumed) == losses(base_run)[1:]
    full, again = load_stage(base_run).state_dict(), load_stage(resumed).state_dict()
    assert all(torch.equal(again[k], v) for k, v in full.items())
    # A checkpoint records its stage: another trainable set (another optimizer layout) is refused in one line.
    with pytest.raises(UserInputError, match="videogen.trainable"):
        run_train(config([*BASE, f"data.video_folder={videos}", "trainer.max_steps=3", "videogen.trainable=temporal",
                          f"trainer.resume={base_run / 'checkpoints' / 'step_0000001'}", f"output_dir={tmp_path / 'x'}"]))


def test_temporal_only_training_keeps_the_image_weights(videos):
    _, base = target("videogen_base", [*BASE, f"data.video_folder={videos}", "videogen.trainable=temporal"])
    trained = {name for name, p in base.unet.named_parameters() if p.requires_grad}
    assert trained == {name for name, _ in base.unet.new_parameters()} | {"conv_in.weight", "conv_in.bias"}
    assert any(name.startswith("fps_embedding.") for name in trained)
    assert not any(".attentions." in name and ".temp_attentions." not in name for name in trained)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(videos, base_run, monkeypatch):
    """The SR target (every condition in play) through VideoUNet's own checkpointing: the temporal convs' dropout is
    seeded per micro-batch and restored on recomputation, so loss and gradients are those of the plain pass."""
    _, sr = target("videogen_sr", [*SR, f"data.video_folder={videos}", f"videogen.init={base_run}"])
    data, _ = held_batch(sr)

    def loss_and_grads():
        sr.unet.zero_grad(set_to_none=True)
        loss = sr.loss(sr.unet.train(), data, Step(5, 0, 0, 1, step_generator(3, 5, 0, 0)))
        loss.backward()
        return float(loss), {name: p.grad.clone() for name, p in sr.unet.named_parameters()}

    plain_loss, plain = loss_and_grads()
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    sr.enable_gradient_checkpointing()
    checkpointed_loss, checkpointed = loss_and_grads()
    assert len(calls) == 25  # every resnet, temporal conv, spatial and temporal transformer of the tiny UNet
    assert checkpointed_loss == pytest.approx(plain_loss, rel=1e-6)
    assert all(torch.allclose(checkpointed[k], g, rtol=1e-5, atol=1e-7) for k, g in plain.items())
    assert plain["noise_level_embedding.linear_2.weight"].abs().max() > 0  # the new condition learns from step 1


def test_a_base_stage_fine_tunes_a_trained_base_given_as_init(videos, base_run, tmp_path):
    """videogen.init on videogen_base: the trained stage as it is (not the SD UNet inflated anew), recorded; a
    super-resolution stage is refused."""
    _, fresh = target("videogen_base", [*BASE, f"data.video_folder={videos}"])
    _, tuned = target("videogen_base", [*BASE, f"data.video_folder={videos}", f"videogen.init={base_run}"])
    trained = load_stage(base_run).state_dict()
    assert all(torch.equal(tuned.unet.state_dict()[k], v) for k, v in trained.items())
    assert not all(torch.equal(fresh.unet.state_dict()[k], v) for k, v in trained.items())
    assert tuned.record()["videogen"]["init"] == str((base_run / "videogen_stage").resolve())
    sr_run = run_train(config([*SR, f"data.video_folder={videos}", f"videogen.init={base_run}", "trainer.max_steps=1",
                               f"output_dir={tmp_path / 'sr'}"]))
    with pytest.raises(UserInputError, match="is stage 2; videogen_base continues from a trained base stage"):
        target("videogen_base", [*BASE, f"data.video_folder={videos}", f"videogen.init={sr_run}"])


# --- the super-resolution stage -------------------------------------------------------------------------------


def test_sr_starts_as_the_base_export_and_its_steps_lower_the_loss(videos, base_run, tmp_path):
    overrides = [*SR, f"data.video_folder={videos}", f"videogen.init={base_run}"]
    _, sr = target("videogen_sr", overrides)
    base = load_stage(base_run).state_dict()
    grown = sr.unet.state_dict()
    # Every base weight under its own key; the new conv_in channels (the upsampled input) and noise-level MLP at zero.
    assert set(base) < set(grown) and all(k.startswith("noise_level_embedding.") for k in set(grown) - set(base))
    assert all(torch.equal(grown[k][:, :8] if k == "conv_in.weight" else grown[k], v) for k, v in base.items())
    assert grown["conv_in.weight"].shape[1] == 12 and torch.count_nonzero(grown["conv_in.weight"][:, 8:]) == 0
    assert torch.count_nonzero(grown["noise_level_embedding.linear_2.weight"]) == 0

    batch = held_batch(sr)
    before = held_loss(sr, sr.unet, batch)
    run_dir = run_train(config([*overrides, "trainer.max_steps=3", "trainer.checkpoint_every=2",
                                f"output_dir={tmp_path / 'sr'}"]))
    after = held_loss(sr, load_stage(run_dir), batch)
    assert np.isfinite(before) and after < 0.95 * before, (before, after)
    info = read_stage_info(run_dir)
    assert (info.index, info.latent_size) == (2, 4)
    state = torch.load(run_dir / "checkpoints" / "step_0000002" / "training_state.pt", weights_only=True)
    assert state["record"]["stage"]["kind"] == "sr" and state["record"]["videogen"]["init"] == str((base_run / "videogen_stage").resolve())

    # Resumed after step 2 of 3: the last loss again.
    resumed = run_train(config([*overrides, "trainer.max_steps=3", f"output_dir={tmp_path / 'sr_resumed'}",
                                f"trainer.resume={run_dir / 'checkpoints' / 'step_0000002'}"]))
    assert losses(resumed) == losses(run_dir)[2:]


def test_sr_refuses_a_missing_or_mismatched_init(videos, base_run, tmp_path):
    with pytest.raises(UserInputError, match="videogen.init"):
        run_train(config([*SR, f"data.video_folder={videos}", f"output_dir={tmp_path / 'a'}"]))
    with pytest.raises(UserInputError, match="not a VideoGen stage"):
        run_train(config([*SR, f"data.video_folder={videos}", f"videogen.init={tmp_path}", f"output_dir={tmp_path / 'b'}"]))
    # The base trained at 2x2 latents: a 64 px stage (8x8) is not the stage above it.
    with pytest.raises(UserInputError, match="starts from stage 1 at 4x4"):
        run_train(config([*SR, f"data.video_folder={videos}", f"videogen.init={base_run}", "data.size=64",
                          f"output_dir={tmp_path / 'c'}"]))
    with pytest.raises(UserInputError, match="videogen.stage"):
        run_train(config([*BASE, f"data.video_folder={videos}", "videogen.stage=2", f"output_dir={tmp_path / 'd'}"]))
    assert not any((tmp_path / name).exists() for name in "abcd")


# --- two ranks ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_hold_identical_weights_and_log_the_mean_loss(videos, tmp_path):
    from test_train_ddp import free_port, spawn_ranks
    from test_train_ranks import worker

    run_dir = tmp_path / "run"
    overrides = [*BASE, f"data.video_folder={videos}", "trainer.batch_size=1", "trainer.max_steps=2",
                 "trainer.checkpoint_every=0", f"output_dir={run_dir}"]
    out = tmp_path / "ranks"
    out.mkdir()
    spawn_ranks(worker, (2, free_port(), overrides, str(out)))
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["weights"].keys() == rank1["weights"].keys()
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"]))  # each rank its own shard
    means = [(a + b) / 2 for a, b in zip(rank0["own"], rank1["own"])]
    assert rank0["own"] != rank1["own"] and rank0["logged"] == pytest.approx(means, rel=1e-9)
    assert losses(run_dir) == pytest.approx(means, rel=1e-9)
    # The export is rank 0's weights, and they moved off the initial stage.
    exported = load_stage(run_dir).state_dict()
    assert all(torch.equal(exported[k], rank0["weights"][k]) for k in exported)
