"""`stylevid invert`: DDIM inversion of videos and images, latents per step, reconstruction and its PSNR."""

import json
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from hydra import compose, initialize_config_module
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from stylevid.errors import UserInputError
from stylevid.invert import (
    CLEAN_KEY,
    latent_key,
    per_frame_and_mean,
    psnr_db,
    read_input,
    reconstruct,
    relative_error,
    run_invert,
)
from stylevid.data import toy_world
from stylevid.io.video import save_frames, write_video
from stylevid.sampling.inversion import ddim_invert
from stylevid.sampling.vae import encode_images


def invert_config(*overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("invert", overrides=["model=tiny", *overrides])


def gradient_frames(count, height, width):
    """A moving colour ramp: smooth enough that H.264 keeps it recognisable."""
    rows, cols = np.mgrid[0:height, 0:width]
    frames = [np.stack([(cols * 2 + 12 * k) % 256, (rows * 3) % 256, np.full_like(cols, 90 + 20 * k)], -1) for k in range(count)]
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, gradient_frames(6, 80, 96), fps=12)
    return path


def test_video_run_saves_latents_per_timestep_and_a_scored_reconstruction(tmp_path, clip_path, tiny_pipe):
    steps = 4
    run_dir = tmp_path / "run"
    selection = ["frames=2", "start=1", "stride=2"]
    cfg = invert_config(f"input={clip_path}", "prompt=a cat", f"steps={steps}", *selection, f"output_dir={run_dir}")
    assert run_invert(cfg) == run_dir
    for name in ("input.mp4", "reconstruction.mp4", "latents.safetensors", "config.yaml", "result.json"):
        assert (run_dir / name).is_file(), name

    # One tensor per DDIM timestep (the sampler's own schedule) plus the clean latents, all (frames, 4, 8, 8).
    sampler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    sampler.set_timesteps(steps)
    timesteps = sorted(int(t) for t in sampler.timesteps)
    latents = load_file(run_dir / "latents.safetensors")
    assert set(latents) == {latent_key(t) for t in timesteps} | {CLEAN_KEY}
    assert latent_key(981) == "t0981" and all(v.shape == (2, 4, 8, 8) for v in latents.values())

    with safe_open(run_dir / "latents.safetensors", "pt") as file:
        metadata = file.metadata()
    assert metadata["prompt"] == "a cat" and metadata["steps"] == "4" and metadata["guidance_scale"] == "1.0"
    assert json.loads(metadata["timesteps"]) == timesteps and json.loads(metadata["frame_indices"]) == [1, 3]
    assert json.loads(metadata["model"])["name"] == "tiny" and (metadata["height"], metadata["width"]) == ("64", "64")

    result = json.loads((run_dir / "result.json").read_text())
    assert result["task"] == "invert" and result["prompt"] == "a cat" and result["timesteps"] == timesteps
    assert result["frame_indices"] == [1, 3] and result["frames"] == 2
    assert result["fps"] == pytest.approx(6.0, rel=1e-3)  # every 2nd frame of a 12 fps clip, in real time
    assert {"inversion", "reconstruction", "decoding", "writing"} <= set(result["timings_s"])

    # The clean latents are the VAE means of the selected, resized frames.
    frames = read_input(str(clip_path), 64, 64, start=1, stride=2, max_frames=2).frames
    torch.testing.assert_close(latents[CLEAN_KEY], encode_images(tiny_pipe.vae, frames), rtol=1e-4, atol=1e-5)
    assert len(result["psnr_db"]["per_frame"]) == 2  # its values: test_toy_model_reconstructs_its_input_above_21_db

    for name in ("input.mp4", "reconstruction.mp4"):
        video = iio.imread(run_dir / name, plugin="FFMPEG")
        assert video.shape == (2, 64, 64, 3)


def test_an_image_input_gives_a_one_frame_run_in_the_default_directory(tmp_path):
    image_path = tmp_path / "photo.png"
    Image.fromarray(gradient_frames(1, 72, 100)[0]).save(image_path)  # not square: centre-cropped to 64x64
    cfg = invert_config(f"input={image_path}", "steps=2", f"outputs_root={tmp_path / 'outputs'}", "save_latents=false")
    run_dir = run_invert(cfg)
    assert run_dir.parent.parent == tmp_path / "outputs" / "invert" and run_dir.name.endswith("_invert")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["frame_indices"] == [0] and len(result["psnr_db"]["per_frame"]) == 1
    assert result["files"]["latents"] is None and not (run_dir / "latents.safetensors").exists()
    assert iio.imread(run_dir / "reconstruction.mp4", plugin="FFMPEG").shape == (1, 64, 64, 3)


def test_psnr_of_hand_computed_cases():
    reference = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    test = reference.copy()
    test[0] = 10  # every value off by 10: MSE 100, 10 log10(255² / 100) = 28.1308 dB
    test[1, :2, :2] = 255  # a quarter of the pixels off by 255: MSE 255² / 4, 10 log10(4) = 6.0206 dB
    got = psnr_db(reference, test)
    np.testing.assert_allclose(got[:2], [28.1308, 6.0206], atol=1e-4)
    assert got[2] == np.inf  # identical frames
    # JSON has no infinity: an infinite PSNR is written as null, and left out of nothing else.
    assert per_frame_and_mean(got)["per_frame"] == [pytest.approx(28.1308, abs=1e-4), pytest.approx(6.0206, abs=1e-4), None]
    assert per_frame_and_mean(got[:2])["mean"] == pytest.approx((28.1308 + 6.0206) / 2, abs=1e-4)


def test_toy_model_reconstructs_its_input_above_21_db(tmp_path):
    """The toy world's trained pipeline inverts its own kind of picture well: measured 22.9 dB PSNR of the
    reconstruction at 20 steps, against 23.6 dB for the VAE round trip alone (the best an exact inversion can do),
    and a latent error of 0.097; 5 steps give 0.27. Asserted with margin."""
    frames = toy_world.video_array(toy_world.random_scene(np.random.default_rng(0)), 4)
    save_frames(tmp_path / "frames", frames)
    results = {}
    for steps in (5, 20):
        cfg = invert_config("model=toy", f"input={tmp_path / 'frames'}", 'prompt="a red circle"', f"steps={steps}",
                            "frames=2", f"output_dir={tmp_path / str(steps)}", "save_latents=false")
        results[steps] = json.loads((run_invert(cfg) / "result.json").read_text())
    result = results[20]
    assert result["psnr_db"]["mean"] > 21.5
    assert result["psnr_db"]["mean"] < result["vae_round_trip_psnr_db"]["mean"] + 0.5
    assert result["latent_relative_error"]["mean"] < 0.15 < 0.2 < results[5]["latent_relative_error"]["mean"]
    # The same judgement from the written video, by a plain formula (H.264 at this quality costs < 0.5 dB here).
    written = iio.imread(tmp_path / "20" / "reconstruction.mp4", plugin="FFMPEG").astype(np.float64)
    mse = np.mean((written - frames[:2].astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0**2 / mse) > 21.0


class LatentBlindUNet:
    """A noise predictor that ignores the latents (but not t or the prompt): with it DDIM inversion is exact."""

    def __call__(self, sample, t, encoder_hidden_states):
        pattern = torch.sin(torch.arange(sample[0].numel(), dtype=sample.dtype).reshape(sample.shape[1:]) * 0.37 + float(t) / 97)
        per_row = 1 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=pattern * per_row)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_reconstruction_undoes_inversion_step_for_step(tiny_pipe, guidance_scale):
    """DDIM inversion is only approximate because the noise is predicted at the neighbouring timestep; with a
    predictor that ignores the latents that approximation is exact, so `reconstruct` must return the clean
    latents to float precision. Any mismatch of timesteps or alphas between the two schedulers breaks this."""
    torch.manual_seed(0)
    clean = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    unet = LatentBlindUNet()
    trajectory = ddim_invert(unet, tiny_pipe.scheduler, clean, cond, 7, negative_embeds=uncond, guidance_scale=guidance_scale)
    noised = trajectory[max(trajectory)]
    assert relative_error(noised, clean).min() > 0.5  # it did move far from the clean latents
    back = reconstruct(unet, tiny_pipe.scheduler, noised, cond, 7, negative_embeds=uncond, guidance_scale=guidance_scale)
    assert relative_error(back, clean).max() < 1e-4


def test_tiny_model_reconstructs_far_closer_from_inverted_latents_than_from_random_noise(tiny_pipe):
    """The tiny UNet is random, so a poor denoiser and its inversion is far from exact; still, its inverted
    latents lead back near the clean latents (measured over seeds and inputs: 3-7x closer than random noise of
    the same norm; asserted with margin)."""
    steps = 10
    clean = encode_images(tiny_pipe.vae, gradient_frames(2, 64, 64))
    cond, _ = tiny_pipe.encode_prompt("a cat", "cpu", 1, False)
    trajectory = ddim_invert(tiny_pipe.unet, tiny_pipe.scheduler, clean, cond, steps)
    inverted = trajectory[max(trajectory)]
    noise = torch.randn(inverted.shape, generator=torch.Generator().manual_seed(0))
    noise = noise * inverted.norm() / noise.norm()
    from_inverted = relative_error(reconstruct(tiny_pipe.unet, tiny_pipe.scheduler, inverted, cond, steps), clean).mean()
    from_noise = relative_error(reconstruct(tiny_pipe.unet, tiny_pipe.scheduler, noise, cond, steps), clean).mean()
    assert from_noise / from_inverted > 2.0


# Bad inputs (every key of conf/invert.yaml) are tested through the CLI in tests/test_bad_input_invert_evaluate.py.


def test_an_output_dir_holding_a_finished_run_is_refused(tmp_path, clip_path):
    run_dir = tmp_path / "run"
    args = [f"input={clip_path}", "steps=1", "frames=1", f"output_dir={run_dir}"]
    run_invert(invert_config(*args))
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    with pytest.raises(UserInputError, match="already holds a finished run"):
        run_invert(invert_config(*args))
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
