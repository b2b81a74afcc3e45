"""The two trained parts of VideoGen's temporal super-resolution on the one loop: `stylevid train latent_flow` and
`stylevid train tsr_refiner` (tiny SD model, toy clips), and the OpenCV teacher flow."""

import json

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

from test_train_ddp import free_port, spawn_ranks
from test_train_ranks import worker

from stylevid.io.video import write_video
from stylevid.errors import UserInputError
from stylevid.models.latent_flow import LatentFlowNet
from stylevid.models.tsr_refiner import load_tsr_refiner
from stylevid.sampling.vae import pixels_from_uint8
from stylevid.train import run_train
from stylevid.training.loop import step_generator
from stylevid.training.targets import Step
from stylevid.training.targets.latent_flow import (
    LatentFlow,
    collate_triples,
    latent_teacher_flows,
    pixel_teacher_flows,
    uint8_frames,
)
from stylevid.training.targets.tsr_refiner import TsrRefiner

TINY = {
    "latent_flow": ["latent_flow.block_out_channels=[8,16,16]"],
    "tsr_refiner": ["tsr_refiner.block_out_channels=[32,64]", "tsr_refiner.layers_per_block=1",
                    "tsr_refiner.norm_num_groups=8", "tsr_refiner.attention_head_dim=8", "tsr_refiner.attention=[false,true]"],
}


def write_panning_videos(folder, count=4, frames=8, size=32, step=(2, 1)):
    """Clips of a blurred noise texture moving `step` pixels a frame (x, y), captioned: a flow every pixel shares,
    unlike the toy squares (which move over a still background)."""
    rng = np.random.default_rng(0)
    dx, dy = step
    for index in range(count):
        texture = cv2.GaussianBlur(rng.integers(0, 255, (3 * size, 3 * size, 3)).astype(np.uint8), (0, 0), 1.5)
        video = np.stack([np.roll(texture, (k * dy, k * dx), axis=(0, 1))[size : 2 * size, size : 2 * size]
                          for k in range(frames)])
        write_video(folder / f"pan_{index:02d}.mp4", video, fps=8)
        (folder / f"pan_{index:02d}.txt").write_text("a texture panning\n")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_panning_videos(folder)
    return folder


def config(target, clips, *overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=[
            f"target={target}", "model=tiny", "device=cpu", f"data.video_folder={clips}", "data.size=32",
            "data.flip=false", "data.num_workers=0", "trainer.batch_size=2", "trainer.lr=3e-3", "trainer.log_every=1",
            "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.tensorboard=false",
            *TINY[target], *overrides])


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the teacher flow ----------------------------------------------------------------------------------------

def translated_triple(dx=3, dy=2, size=64):
    """A textured image and two copies whose content moved by (dx, dy) and 2 (dx, dy) pixels (numpy roll)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.uint8), (0, 0), 1.5)
    return np.stack([texture, np.roll(texture, (dy, dx), axis=(0, 1)), np.roll(texture, (2 * dy, 2 * dx), axis=(0, 1))])


def test_teacher_flow_of_a_translated_image_is_the_translation_and_scales_to_the_latent_grid():
    dx, dy = 3, 2
    frames = translated_triple(dx, dy)
    flows = pixel_teacher_flows(frames)  # (H, W, 4): I_t(p) = I_0(p + F_t->0) means F_t->0 = -(dx, dy)
    interior = flows[8:-8, 8:-8]
    assert np.abs(interior - np.array([-dx, -dy, dx, dy], dtype=np.float32)).max() < 0.5
    latent = latent_teacher_flows(frames, 8, 8)  # 64 px -> 8 latent pixels: 1/8 of the displacement
    assert latent.shape == (4, 8, 8)
    expected = torch.tensor([-dx, -dy, dx, dy], dtype=torch.float32).view(4, 1, 1) / 8
    assert (latent[:, 1:-1, 1:-1] - expected).abs().max() < 0.5 / 8
    # the dataset's [-1, 1] pixels go back to exactly the frames they came from
    assert np.array_equal(uint8_frames(pixels_from_uint8(frames)), frames)


# --- latent_flow -------------------------------------------------------------------------------------------------

def test_latent_flow_steps_lower_the_loss_on_a_fixed_batch(clips, tmp_path):
    cfg = config("latent_flow", clips, "trainer.max_steps=8", "trainer.checkpoint_every=0", f"output_dir={tmp_path / 'run'}")
    target = LatentFlow(cfg, torch.device("cpu"), torch.float32, None)
    held = collate_triples([target.triples[0], target.triples[1]])
    # 32 px frames, 4x4 latents; I_t is 2 frames = (4, 2) px = (0.5, 0.25) latent px on from I_0, I_1 as far again
    assert held["teacher_flow"].shape == (2, 4, 4, 4)
    teacher = held["teacher_flow"][:, :, 1:-1, 1:-1].flatten(2).median(dim=2).values
    assert torch.allclose(teacher, torch.tensor([-0.5, -0.25, 0.5, 0.25]).expand(2, 4), atol=0.1)
    at = Step(1000, 0, 0, 1, step_generator(0, 1000, 0, 0))
    with torch.no_grad():
        before = float(target.loss(target.net.eval(), held, at))
    run_dir = run_train(cfg)
    with torch.no_grad():
        after = float(target.loss(LatentFlowNet.from_pretrained(run_dir / "latent_flow").eval(), held, at))
    assert after < 0.9 * before


def test_latent_flow_resume_repeats_the_uninterrupted_run(clips, tmp_path):
    run = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    full = run_train(config("latent_flow", clips, *run, f"output_dir={tmp_path / 'full'}"))
    state = torch.load(full / "checkpoints" / "step_0000001" / "training_state.pt", weights_only=True)
    assert state["record"]["latent_flow"] == {"in_channels": 4, "block_out_channels": [8, 16, 16]}
    resumed = run_train(config("latent_flow", clips, *run, f"output_dir={tmp_path / 'resumed'}",
                               f"trainer.resume={full / 'checkpoints' / 'step_0000001'}"))
    assert losses(resumed) == pytest.approx(losses(full)[1:], rel=1e-6)
    weights = "latent_flow/diffusion_pytorch_model.safetensors"
    ours, theirs = load_file(full / weights), load_file(resumed / weights)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(UserInputError, match="latent_flow.block_out_channels"):
        run_train(config("latent_flow", clips, *run, "latent_flow.block_out_channels=[8,16]", f"output_dir={tmp_path / 'other'}",
                         f"trainer.resume={full / 'checkpoints' / 'step_0000001'}"))


# --- tsr_refiner -------------------------------------------------------------------------------------------------

def test_tsr_refiner_steps_lower_the_loss_on_a_fixed_batch(clips, tmp_path):
    cfg = config("tsr_refiner", clips, "trainer.max_steps=8", "trainer.checkpoint_every=0", f"output_dir={tmp_path / 'run'}")
    torch.manual_seed(0)
    target = TsrRefiner(cfg, torch.device("cpu"), torch.float32, None)
    held = collate_triples([target.triples[i] for i in range(4)])

    def held_loss(unet):  # the same noise and timesteps for both
        with torch.no_grad():
            return float(target.loss(unet.eval(), held, Step(1000, 0, 0, 1, step_generator(0, 1000, 0, 0))))

    before = held_loss(target.unet)
    run_dir = run_train(cfg)
    unet, scheduler = load_tsr_refiner(run_dir / "tsr_refiner", key="test")
    assert held_loss(unet) < 0.9 * before
    assert unet.config.in_channels == 8 and scheduler.config.beta_schedule == "scaled_linear"  # diffusion=sd
    assert json.loads((run_dir / "result.json").read_text())["coarse"] == "linear"


def test_tsr_refiner_on_a_flow_net_resumes_exactly(clips, tmp_path):
    """The coarse latent from a frozen LatentFlowNet directory (tsr_refiner.flow_path); interrupted after step 1."""
    torch.manual_seed(0)
    flow = LatentFlowNet(block_out_channels=(8, 16, 16))
    with torch.no_grad():
        for decoder in flow.decoders:
            decoder.head.weight.normal_(0, 0.1)  # not linear interpolation
    flow.save_pretrained(tmp_path / "flow")
    run = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
           f"tsr_refiner.flow_path={tmp_path / 'flow'}"]
    full = run_train(config("tsr_refiner", clips, *run, f"output_dir={tmp_path / 'full'}"))
    linear = run_train(config("tsr_refiner", clips, "trainer.max_steps=1", "trainer.checkpoint_every=0",
                              f"output_dir={tmp_path / 'linear'}"))
    assert losses(linear)[0] != pytest.approx(losses(full)[0], rel=1e-6)  # the condition is the flow net's
    resumed = run_train(config("tsr_refiner", clips, *run, f"output_dir={tmp_path / 'resumed'}",
                               f"trainer.resume={full / 'checkpoints' / 'step_0000001'}"))
    assert losses(resumed) == pytest.approx(losses(full)[1:], rel=1e-6)
    weights = "tsr_refiner/diffusion_pytorch_model.safetensors"
    ours, theirs = load_file(full / weights), load_file(resumed / weights)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(UserInputError, match="coarse latents from"):
        run_train(config("tsr_refiner", clips, "trainer.max_steps=3", f"output_dir={tmp_path / 'other'}",
                         f"trainer.resume={full / 'checkpoints' / 'step_0000001'}"))


# --- both ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    (["target=latent_flow", "data.frames=4"], "data.frames must be 3"),
    (["target=latent_flow", "latent_flow.flow_weight=-1"], "latent_flow.flow_weight"),
    (["target=latent_flow", "latent_flow.teacher_preset=slow"], "latent_flow.teacher_preset"),
    (["target=latent_flow", "latent_flow.block_out_channels=[]"], "latent_flow.block_out_channels"),
    (["target=tsr_refiner", "tsr_refiner.flow_path=/nowhere"], "tsr_refiner.flow_path=/nowhere is not a directory"),
    (["target=tsr_refiner", "tsr_refiner.attention=[true]"], "tsr_refiner.attention"),
    (["target=tsr_refiner", "tsr_refiner.norm_num_groups=48"], "tsr_refiner.norm_num_groups=48 must divide"),
    (["target=tsr_refiner", "data=images", "data.folder=/tmp"], "data=webvid, data=folder, data=toy, not data=images"),
])
def test_bad_settings_are_one_line_errors(clips, overrides, match):
    from stylevid.training.settings import check_train_config

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        videos = [] if "data=images" in overrides else [f"data.video_folder={clips}"]
        cfg = compose("train", overrides=[*overrides, "model=tiny", *videos])
    with pytest.raises(UserInputError, match=match) as error:
        check_train_config(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["latent_flow", "tsr_refiner"])
def test_two_ranks_hold_identical_weights_and_log_the_mean_loss(target, clips, tmp_path):
    """test_train_ranks' worker: each rank's own losses and batches recorded; two gloo ranks on the CPU."""
    run_dir = tmp_path / "run"
    cfg_overrides = [f"target={target}", "model=tiny", "device=cpu", f"data.video_folder={clips}", "data.size=32",
                     "data.num_workers=0", "trainer.batch_size=1", "trainer.lr=1e-3", "trainer.mixed_precision=no",
                     "trainer.gradient_checkpointing=false", *TINY[target], "trainer.max_steps=2", "trainer.log_every=1",
                     "trainer.checkpoint_every=0", "trainer.tensorboard=false", f"output_dir={run_dir}"]
    out = tmp_path / "ranks"
    out.mkdir()
    spawn_ranks(worker, (2, free_port(), cfg_overrides, str(out)))
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"]))  # each rank its own shard
    means = [(a + b) / 2 for a, b in zip(rank0["own"], rank1["own"])]
    assert rank0["own"] != rank1["own"] and rank0["logged"] == pytest.approx(means, rel=1e-9)
    assert losses(run_dir) == pytest.approx(means, rel=1e-9)
