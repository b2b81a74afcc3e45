"""Structure conditions (ControlNet) in generation: peer check, annotation cache, multi-control, errors."""

import json
import logging

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from stylevid.attention import CrossFrameAttnProcessor
from stylevid.conditions.control import cache_condition_maps, prepare_condition_maps
from stylevid.errors import UserInputError
from stylevid.generate import run_generate
from stylevid.io.video_input import read_frames
from stylevid.methods.t2v_zero import Control, ZeroShotSettings, ZeroShotVideo
from stylevid.models.controlnet import tiny_controlnet

TINY = ["model=tiny", "frames=3", "steps=6", "height=64", "width=64", "fps=4"]


def config(*overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


@pytest.fixture(scope="module")
def moving_square_video(tmp_path_factory):
    """8 frames at 4 fps of a white square moving right on grey: clear edges that move."""
    frames = np.full((8, 64, 64, 3), 90, dtype=np.uint8)
    for i in range(8):
        frames[i, 20:44, 4 + 4 * i : 28 + 4 * i] = 255
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    iio.imwrite(path, frames, fps=4, plugin="FFMPEG", codec="libx264", macro_block_size=8)
    return str(path)


def test_one_frame_equals_diffusers_controlnet_pipeline(tiny_pipe):
    from diffusers import StableDiffusionControlNetPipeline

    controlnet = tiny_controlnet(tiny_pipe.unet)
    edges = (np.random.default_rng(0).random((64, 64, 3)) > 0.8).astype(np.uint8) * 255
    reference = StableDiffusionControlNetPipeline(
        vae=tiny_pipe.vae, text_encoder=tiny_pipe.text_encoder, tokenizer=tiny_pipe.tokenizer, unet=tiny_pipe.unet,
        controlnet=controlnet, scheduler=tiny_pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "a dancer", image=Image.fromarray(edges), height=64, width=64, num_inference_steps=8,
        generator=torch.Generator().manual_seed(5), output_type="np", controlnet_conditioning_scale=0.8,
        control_guidance_start=0.1, control_guidance_end=0.8,
    ).images
    image = torch.from_numpy(edges).permute(2, 0, 1)[None].float() / 255
    control = Control(controlnet, [image], [0.8], guidance_start=0.1, guidance_end=0.8)
    ours = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="a dancer", frames=1, height=64, width=64, steps=8, seed=5, t0=3, t1=5), control=control)
    assert np.abs(ours.frames.astype(int) - (expected * 255).round().astype(int)).max() <= 1


def test_one_frame_with_two_controlnets_equals_diffusers_multi_controlnet_pipeline(tiny_pipe):
    """condition=[depth,canny] runs as diffusers' MultiControlNetModel; one frame (cross-frame attention is then
    the frame's own, no style row) must match diffusers' pipeline given the same two nets, maps and scales."""
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    nets = [tiny_controlnet(tiny_pipe.unet, seed=0), tiny_controlnet(tiny_pipe.unet, seed=1)]
    rng = np.random.default_rng(0)
    edges = (rng.random((64, 64, 3)) > 0.8).astype(np.uint8) * 255
    depth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    scales = [0.8, 0.5]
    reference = StableDiffusionControlNetPipeline(
        vae=tiny_pipe.vae, text_encoder=tiny_pipe.text_encoder, tokenizer=tiny_pipe.tokenizer, unet=tiny_pipe.unet,
        controlnet=MultiControlNetModel(nets), scheduler=tiny_pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "a dancer", image=[Image.fromarray(depth), Image.fromarray(edges)], height=64, width=64, num_inference_steps=8,
        generator=torch.Generator().manual_seed(5), output_type="np", controlnet_conditioning_scale=scales,
        control_guidance_start=0.1, control_guidance_end=0.8,
    ).images
    images = [torch.from_numpy(m).permute(2, 0, 1)[None].float() / 255 for m in (depth, edges)]
    control = Control(MultiControlNetModel(nets), images, scales, guidance_start=0.1, guidance_end=0.8)
    ours = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="a dancer", frames=1, height=64, width=64, steps=8, seed=5, t0=3, t1=5), control=control)
    assert np.abs(ours.frames.astype(int) - (expected * 255).round().astype(int)).max() <= 1
    # Both nets matter: with the depth net's scale at 0 the frame changes.
    alone = Control(MultiControlNetModel(nets), images, [0.0, 0.5], guidance_start=0.1, guidance_end=0.8)
    edges_only = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="a dancer", frames=1, height=64, width=64, steps=8, seed=5, t0=3, t1=5), control=alone)
    assert np.abs(edges_only.frames.astype(int) - ours.frames.astype(int)).max() > 1


def test_shared_noise_without_control_effect_gives_identical_frames(tiny_pipe):
    """Conditional mode: one x_T for all frames + cross-frame attention; with scale 0 nothing tells frames apart."""
    controlnet = tiny_controlnet(tiny_pipe.unet)
    maps = torch.zeros(3, 3, 64, 64)
    maps[1, :, :, 32:] = 1.0  # frames differ only in their maps
    maps[2] = 1.0
    out = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="x", frames=3, height=64, width=64, steps=6, t0=2, t1=4), control=Control(controlnet, [maps], [0.0]))
    torch.testing.assert_close(out.latents[1:], out.latents[:1].expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    moved = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="x", frames=3, height=64, width=64, steps=6, t0=2, t1=4), control=Control(controlnet, [maps], [1.0]))
    assert (moved.latents[1] - moved.latents[0]).abs().max() > 1e-2


def test_controlnet_gets_cross_frame_attention_during_generation(tiny_pipe):
    controlnet = tiny_controlnet(tiny_pipe.unet)
    seen = []
    handle = controlnet.register_forward_pre_hook(lambda module, args: seen.append({type(p) for n, p in module.attn_processors.items() if "attn1" in n}))
    ZeroShotVideo(tiny_pipe)(ZeroShotSettings(prompt="x", frames=2, height=64, width=64, steps=4, t0=1, t1=2), control=Control(controlnet, [torch.rand(2, 3, 64, 64)], [1.0]))
    handle.remove()
    assert seen and all(types == {CrossFrameAttnProcessor} for types in seen)
    assert not any(isinstance(p, CrossFrameAttnProcessor) for p in controlnet.attn_processors.values())


def test_canny_run_caches_maps_and_reusing_them_gives_the_same_video(tmp_path, moving_square_video):
    first = run_generate(config("method=t2v_zero", "prompt=a square", *TINY, "condition=canny", f"condition.video={moving_square_video}",
                                "controlnet.path=tiny", f"output_dir={tmp_path / 'a'}", "save_frames=true", "condition.low_threshold=50"))
    maps = sorted((first / "conditions" / "canny").glob("*.png"))
    assert len(maps) == 3
    source = read_frames(moving_square_video, 3, height=64, width=64, fps=4, label="test")
    expected = cv2.Canny(source[1], 50, 200)
    assert np.array_equal(np.asarray(Image.open(maps[1]))[..., 0], expected)
    result = json.loads((first / "result.json").read_text())
    assert result["conditions"]["kinds"] == ["canny"]

    again = run_generate(config("method=t2v_zero", "prompt=a square", *TINY, "condition=canny", f"condition.maps={maps[0].parent}",
                                "controlnet.path=tiny", f"output_dir={tmp_path / 'b'}", "save_frames=true"))
    for a, b in zip(sorted((first / "frames").glob("*.png")), sorted((again / "frames").glob("*.png"))):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_maps_cached_by_a_run_with_start_and_stride_come_back_unshifted(tmp_path, moving_square_video, caplog):
    """The cached folder holds the selected frames already: start/stride/fps select from condition.video only."""
    selection = ["condition=canny", "condition.start=2", "condition.stride=2", "condition.low_threshold=50"]
    annotated = prepare_condition_maps(config("method=t2v_zero", *TINY, *selection, f"condition.video={moving_square_video}"), 3, 64, 64, 4.0)
    source = read_frames(moving_square_video, 3, height=64, width=64, start=2, stride=2, fps=4)
    assert np.array_equal(annotated.maps["canny"][..., 0], np.stack([cv2.Canny(frame, 50, 200) for frame in source]))
    folder = cache_condition_maps(annotated, tmp_path)["canny"]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reused = prepare_condition_maps(config("method=t2v_zero", *TINY, *selection, f"condition.maps={folder}"), 3, 64, 64, 4.0)
    assert reused.annotated == [] and np.array_equal(reused.maps["canny"], annotated.maps["canny"])
    assert not caplog.records  # in particular no "fps ignored" for a folder that has no timing


def test_annotators_run_on_the_generation_device(monkeypatch, moving_square_video):
    """Depth and pose models are loaded with the run's device and (where safe) dtype, not always CPU float32."""
    from stylevid.conditions import control, depth, pose

    loaded = {}

    def fake_loader(kind, make_tiny):
        def from_pretrained(path, *, device, dtype, **options):
            loaded[kind] = (path, device, dtype)
            return make_tiny(device=device)
        return from_pretrained

    monkeypatch.setattr(depth.DepthAnnotator, "from_pretrained", fake_loader("depth", depth.tiny_depth_annotator))
    monkeypatch.setattr(pose.VitPoseDetector, "from_pretrained", fake_loader("pose", pose.tiny_pose_detector))
    cfg = config("method=t2v_zero", *TINY, "condition=[depth,pose]", f"condition.video={moving_square_video}",
                 "condition.controls.depth.annotator=my/depth", "condition.controls.pose.annotator=my/pose")
    prepared = prepare_condition_maps(cfg, 3, 64, 64, 4.0, device=torch.device("cpu"), dtype=torch.float16)
    assert prepared.maps["depth"].shape == prepared.maps["pose"].shape == (3, 64, 64, 3)
    # float16 on CPU is slow or unsupported: the annotators stay float32 there.
    assert loaded == {"depth": ("my/depth", torch.device("cpu"), torch.float32), "pose": ("my/pose", torch.device("cpu"), torch.float32)}
    # On CUDA they take float16 but not bfloat16 (too coarse for 256 depth levels).
    cuda = torch.device("cuda")
    assert control._annotator_options(cfg, "depth", cuda, torch.float16)["dtype"] == torch.float16
    assert control._annotator_options(cfg, "pose", cuda, torch.bfloat16)["dtype"] == torch.float32
    assert control._annotator_options(cfg, "pose", cuda, torch.float16)["device"] == cuda


def test_several_conditions_and_style_at_once(tmp_path, moving_square_video, style_image_path):
    run = run_generate(config("method=stylet2v0", "prompt=a square", f"style={style_image_path}", *TINY, "condition=[depth,canny]",
                              f"condition.video={moving_square_video}", "condition.controls.depth.controlnet=tiny",
                              "condition.controls.depth.annotator=tiny", "condition.controls.canny.controlnet=tiny",
                              "condition.controls.depth.scale=0.5", f"output_dir={tmp_path / 'multi'}"))
    result = json.loads((run / "result.json").read_text())
    assert result["conditions"]["kinds"] == ["depth", "canny"] and result["conditions"]["scales"] == [0.5, 1.0]
    assert len(list((run / "conditions" / "depth").glob("*.png"))) == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["condition=canny"], "needs an input"),
        (["condition=canny", "condition.video=VIDEO", "frames=20"], "requested"),
        (["condition=canny", "condition.video=VIDEO", "controlnet.path=/no/such/controlnet"], "does not exist"),
        (["condition=canny", "condition.video=VIDEO", "controlnet.path=tiny", "condition.guidance_start=0.9", "condition.guidance_end=0.2"], "guidance_start"),
        (["condition=pose", "controlnet.path=tiny", "condition.maps=MAPS", "frames=5"], "requested"),
        (["condition=canny", "controlnet.path=tiny", "condition.maps=MAPS", "height=128", "width=128"], "64x64"),
        (["condition.video=VIDEO"], "no condition kind"),
        (["condition=canny", "condition.video=VIDEO", "controlnet.path=tiny", "condition.max_frames=2"],
         "has 2 frames after start=0 stride=1 fps=4 max_frames=2 .8 in the source.; 3 requested"),
        (["condition=[depth,canny]", "condition.video=VIDEO", "controlnet.path=tiny"],
         "controlnet.path= applies only to a single condition; with condition=.depth,canny. set "
         "condition.controls.depth.controlnet=, condition.controls.canny.controlnet= instead"),
        (["condition=[depth,canny]", "condition.video=VIDEO", "annotator.path=tiny"], "set condition.controls.depth.annotator= instead"),
        (["condition=[depth,canny]", "condition.maps=MAPS"], "condition.controls.depth.maps=, condition.controls.canny.maps="),
    ],
)
def test_condition_errors(overrides, message, tmp_path, moving_square_video):
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(maps_dir / f"{i:04d}.png")
    overrides = [o.replace("MAPS", str(maps_dir)).replace("VIDEO", moving_square_video) for o in overrides]
    with pytest.raises(UserInputError, match=message) as error:
        run_generate(config("method=t2v_zero", "prompt=x", *TINY, *overrides, f"outputs_root={tmp_path / 'out'}"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
