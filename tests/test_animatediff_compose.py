"""method=animatediff composed with the other features: ControlNet conditions (peer: diffusers'
AnimateDiffControlNetPipeline), a style image (strength 0 is plain AnimateDiff), CPU offload, VAE slicing."""

import json

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffControlNetPipeline, DDIMScheduler
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from hydra import compose, initialize_config_module
from PIL import Image
from test_animatediff import trained_like_adapter  # non-zero motion weights, so the temporal layers act

from stylevid.generate import run_generate
from stylevid.methods import animatediff
from stylevid.models.controlnet import tiny_controlnet
from stylevid.models.motion_module import save_motion_adapter
from stylevid.models.tiny import tiny_pipeline

FRAMES, SIZE = 4, 64
TINY = ["model=tiny", f"frames={FRAMES}", "steps=3", f"height={SIZE}", f"width={SIZE}", "seed=3", "save_frames=true"]


def config(*overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=["method=animatediff", *TINY, *overrides])


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory):
    return save_motion_adapter(trained_like_adapter(), tmp_path_factory.mktemp("motion") / "mm")


@pytest.fixture(scope="module")
def map_folders(tmp_path_factory):
    """Two ready-made condition videos (a square moving right; a bar moving down) as PNG folders."""
    root = tmp_path_factory.mktemp("maps")
    maps = {"canny": np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8), "depth": np.full((FRAMES, SIZE, SIZE, 3), 40, np.uint8)}
    for i in range(FRAMES):
        maps["canny"][i, 16:40, 4 + 6 * i : 28 + 6 * i] = 255
        maps["depth"][i, 8 + 8 * i : 24 + 8 * i] = 200
    folders = {}
    for kind, frames in maps.items():
        folder = root / kind
        folder.mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
        folders[kind] = (folder, frames)
    return folders


def saved_frames(run_dir):
    return np.stack([np.asarray(Image.open(path)) for path in sorted((run_dir / "frames").glob("*.png"))])


def peer_frames(motion_dir, maps: list[np.ndarray], scales: list[float], start: float, end: float, prompt: str) -> np.ndarray:
    """diffusers' AnimateDiffControlNetPipeline on the same tiny components (model=tiny is tiny_pipeline(0), the
    tiny ControlNet is tiny_controlnet(unet) per kind), AnimateDiff's DDIM schedule, the same seed."""
    from diffusers import MotionAdapter

    pipe = tiny_pipeline(0)
    nets = [tiny_controlnet(pipe.unet) for _ in maps]
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                          clip_sample=False, timestep_spacing="linspace", steps_offset=1)
    peer = AnimateDiffControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        motion_adapter=MotionAdapter.from_pretrained(str(motion_dir)), scheduler=scheduler,
        controlnet=nets[0] if len(nets) == 1 else MultiControlNetModel(nets),
    )
    peer.set_progress_bar_config(disable=True)
    videos = [[Image.fromarray(frame) for frame in video] for video in maps]
    frames = peer(
        prompt=prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(3), output_type="np",
        conditioning_frames=videos if len(videos) > 1 else videos[0],
        controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
        control_guidance_start=start, control_guidance_end=end,
    ).frames[0]
    return (np.asarray(frames) * 255).round().astype(np.uint8)


def test_one_controlnet_matches_diffusers_animatediff_controlnet_pipeline(tmp_path, motion_dir, map_folders):
    folder, maps = map_folders["canny"]
    run = run_generate(config("prompt=a square", f"motion.path={motion_dir}", "condition=canny", "controlnet.path=tiny",
                              f"condition.maps={folder}", "condition.scale=0.8", f"output_dir={tmp_path / 'one'}"))
    ours = saved_frames(run)
    expected = peer_frames(motion_dir, [maps], [0.8], 0.0, 1.0, "a square")
    assert ours.shape == expected.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    # the condition really acts: without it the video differs
    plain = saved_frames(run_generate(config("prompt=a square", f"motion.path={motion_dir}", f"output_dir={tmp_path / 'plain'}")))
    assert np.abs(plain.astype(int) - ours.astype(int)).mean() > 1
    result = json.loads((run / "result.json").read_text())
    assert result["conditions"]["kinds"] == ["canny"] and result["conditions"]["scales"] == [0.8]
    assert result["motion"]["path"] == str(motion_dir)


def test_two_controlnets_with_scales_and_a_guidance_window_match_diffusers(tmp_path, motion_dir, map_folders):
    (canny_folder, canny), (depth_folder, depth) = map_folders["canny"], map_folders["depth"]
    run = run_generate(config(
        "prompt=a square and a bar", f"motion.path={motion_dir}", "condition=[canny,depth]",
        "condition.controls.canny.controlnet=tiny", "condition.controls.depth.controlnet=tiny",
        f"condition.controls.canny.maps={canny_folder}", f"condition.controls.depth.maps={depth_folder}",
        "condition.controls.depth.scale=0.5", "condition.scale=1.2", "condition.guidance_start=0.2",
        "condition.guidance_end=0.7", f"output_dir={tmp_path / 'two'}",
    ))
    expected = peer_frames(motion_dir, [canny, depth], [1.2, 0.5], 0.2, 0.7, "a square and a bar")
    assert np.abs(saved_frames(run).astype(int) - expected.astype(int)).max() <= 1
    assert json.loads((run / "result.json").read_text())["conditions"]["scales"] == [1.2, 0.5]


def test_style_strength_zero_is_plain_animatediff_and_strength_one_is_not(tmp_path, motion_dir, style_image_path):
    common = ["prompt=a red circle", f"motion.path={motion_dir}"]
    plain = saved_frames(run_generate(config(*common, f"output_dir={tmp_path / 'plain'}")))
    zero_run = run_generate(config(*common, f"style={style_image_path}", "method.strength=0", f"output_dir={tmp_path / 'zero'}"))
    assert np.array_equal(saved_frames(zero_run), plain)
    styled_run = run_generate(config(*common, f"style={style_image_path}", f"output_dir={tmp_path / 'styled'}"))
    assert np.abs(saved_frames(styled_run).astype(int) - plain.astype(int)).mean() > 1
    result = json.loads((styled_run / "result.json").read_text())
    assert result["style"] == style_image_path and result["style_sharing"]["sharing"] == "aligned"
    assert result["style_sharing"]["layers"] == ["up_blocks"] and result["style_sharing"]["reference"] == "clean"


def test_style_reference_inverted_runs_the_inversion_through_the_image_layers(tmp_path, motion_dir, style_image_path):
    run = run_generate(config("prompt=a red circle", f"motion.path={motion_dir}", f"style={style_image_path}",
                              "method.sharing=paper", f"output_dir={tmp_path / 'paper'}"))
    result = json.loads((run / "result.json").read_text())
    assert result["style_sharing"]["reference"] == "inverted" and "style inversion" in result["timings_s"]
    clean = run_generate(config("prompt=a red circle", f"motion.path={motion_dir}", f"style={style_image_path}",
                                "method.sharing=paper", "method.reference=clean", f"output_dir={tmp_path / 'clean'}"))
    assert not np.array_equal(saved_frames(run), saved_frames(clean))  # the inverted latents are not the clean one


def test_cpu_offload_and_vae_slicing_give_the_same_video(motion_dir, style_image_path, map_folders):
    """diffusers' model CPU offload (here onto the CPU itself, the only device a CPU machine has: the same hooks
    move each model in and out) with ControlNet and style at once, and one-frame VAE decoding, change nothing."""
    from stylevid.conditions.control import prepare_condition_maps

    folder, _ = map_folders["canny"]
    cfg = config("prompt=a square", f"motion.path={motion_dir}", "condition=canny", "controlnet.path=tiny",
                 f"condition.maps={folder}", f"style={style_image_path}")
    method = animatediff.AnimateDiff()
    settings = method.settings(cfg)
    conditions = prepare_condition_maps(cfg, FRAMES, SIZE, SIZE, 8.0)
    reference = method.generate(method.load(cfg, settings, torch.device("cpu"), torch.float32, conditions), settings, None)

    offloaded = method.load(cfg, settings, torch.device("cpu"), torch.float32, conditions)
    offloaded.video_pipe.enable_model_cpu_offload(device="cpu")
    sliced = config("prompt=a square", f"motion.path={motion_dir}", "condition=canny", "controlnet.path=tiny",
                    f"condition.maps={folder}", f"style={style_image_path}", "vae_slicing=true")
    sliced_settings = method.settings(sliced)
    assert sliced_settings.frames_per_decode == 1
    output = method.generate(offloaded, sliced_settings, None)
    assert np.abs(output.frames.astype(int) - reference.frames.astype(int)).max() <= 1
