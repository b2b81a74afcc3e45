"""method=animatediff: peer check against diffusers' AnimateDiffPipeline, motion/LoRA loading, configs."""

import numpy as np
import pytest
from conftest import run_stylevid
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from hydra import compose, initialize_config_module
from safetensors.torch import save_file

from stylevid.errors import UserInputError
from stylevid.methods import animatediff
from stylevid.models.lora import fuse_lora
from stylevid.models.motion_module import export_original, save_motion_adapter, tiny_motion_adapter
from stylevid.models.tiny import tiny_pipeline
from stylevid.progress import StageReporter


def trained_like_adapter(seed: int = 1):
    """A tiny motion module with non-zero weights everywhere (as after training), so motion really acts."""
    adapter = tiny_motion_adapter(seed=0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapter


def settings(**overrides):
    values = dict(prompt="a cat surfing", negative_prompt="blurry", frames=4, height=64, width=64, steps=2, guidance_scale=7.5, seed=3)
    values.update(overrides)
    return animatediff.AnimateDiffSettings(**values)


def diffusers_latents(adapter, s, free_noise=None, output_type="latent"):
    pipe = tiny_pipeline(0)
    scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
    )
    peer = AnimateDiffPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, adapter, scheduler)
    peer.set_progress_bar_config(disable=True)
    if free_noise:
        peer.enable_free_noise(**free_noise)
    return peer(
        prompt=s.prompt, negative_prompt=s.negative_prompt, num_frames=s.frames, height=s.height, width=s.width,
        num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(s.seed), output_type=output_type,
    ).frames[0]


def diffusers_frames(adapter, s):
    """The peer's decoded video as uint8 (F, H, W, 3), from its own output_type='np' (floats in [0, 1])."""
    frames = diffusers_latents(adapter, s, output_type="np")
    return (np.asarray(frames) * 255).round().astype(np.uint8)


def test_matches_diffusers_animatediff_pipeline():
    adapter = trained_like_adapter()
    s = settings()
    reporter = StageReporter()
    output = animatediff.generate(tiny_pipeline(0), adapter, s, reporter)
    expected = diffusers_latents(adapter, s).permute(1, 0, 2, 3)
    torch.testing.assert_close(output.latents, expected, rtol=0, atol=1e-6)
    assert output.frames.shape == (4, 64, 64, 3) and output.frames.dtype == np.uint8
    # and the frames a user gets: diffusers' own decoding and post-processing, uint8 difference at most 1
    peer_frames = diffusers_frames(adapter, s)
    assert peer_frames.shape == output.frames.shape
    assert np.abs(peer_frames.astype(int) - output.frames.astype(int)).max() <= 1
    assert {"inflating", "denoising", "decoding"} <= set(reporter.timings)
    # the motion module really acts: frames differ from sampling with a zero (identity) module
    still = animatediff.generate(tiny_pipeline(0), tiny_motion_adapter(seed=0), s)
    assert (still.latents - output.latents).abs().max() > 1e-3


def test_free_noise_matches_diffusers_for_a_long_video():
    adapter = trained_like_adapter()
    s = settings(frames=6, free_noise=True, context_length=4, context_stride=2, guidance_scale=1.0)
    output = animatediff.generate(tiny_pipeline(0), adapter, s)
    expected = diffusers_latents(adapter, s, free_noise={"context_length": 4, "context_stride": 2}).permute(1, 0, 2, 3)
    torch.testing.assert_close(output.latents, expected, rtol=0, atol=1e-6)


def test_window_longer_than_the_module_is_a_user_error():
    with pytest.raises(UserInputError, match="free_noise"):
        animatediff.generate(tiny_pipeline(0), tiny_motion_adapter(seed=0), settings(frames=40, steps=1))


def test_image_lora_is_fused_with_its_scale(tmp_path):
    pipe = tiny_pipeline(0)
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    down, up = torch.randn(4, 32), torch.randn(32, 4)
    kohya = "lora_unet_" + module.replace(".", "_")
    save_file({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up, f"{kohya}.alpha": torch.tensor(2.0)},
              str(tmp_path / "kohya.safetensors"))
    save_file({f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up}, str(tmp_path / "peft.safetensors"))
    before = pipe.unet.get_submodule(module).weight.clone()
    fuse_lora({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, tmp_path / "kohya.safetensors", 0.8)
    torch.testing.assert_close(pipe.unet.get_submodule(module).weight, before + 0.8 * (2.0 / 4) * up @ down)
    fuse_lora({"unet": pipe.unet}, tmp_path / "peft.safetensors", 1.0)  # no alpha: alpha = rank
    torch.testing.assert_close(pipe.unet.get_submodule(module).weight, before + 0.4 * up @ down + up @ down)


def test_motion_path_loads_every_format_and_the_config_composes(tmp_path):
    adapter = trained_like_adapter()
    save_motion_adapter(adapter, tmp_path / "mm")
    export_original(adapter, tmp_path / "mm.safetensors")
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        for path in (tmp_path / "mm", tmp_path / "mm.safetensors"):
            cfg = compose("generate", overrides=["method=animatediff", "model=tiny", "prompt=x", f"motion.path={path}",
                                                 "motion.num_attention_heads=2"])
            loaded = animatediff.load_motion(cfg)
            assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
        cfg = compose("generate", overrides=["method=animatediff", "model=sd15", "prompt=x"])
    assert cfg.frames == 16 and cfg.method.beta_schedule == "linear"
    with pytest.raises(UserInputError, match="motion.path"):
        animatediff.load_motion(cfg)


def other_base_adapter():
    """A motion module made for a base with other channels (16/32 instead of the tiny UNet's 32/64)."""
    from diffusers import MotionAdapter

    return MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                         motion_num_attention_heads=2)


def run_cli(args, capsys):
    code, _, err = run_stylevid(args, capsys)
    return code, err


@pytest.mark.parametrize("fmt", ["diffusers", "original"])
def test_motion_module_from_another_base_is_one_line_exit_2_and_no_run_directory(fmt, tmp_path, capsys):
    adapter = other_base_adapter()
    path = save_motion_adapter(adapter, tmp_path / "mm") if fmt == "diffusers" else export_original(adapter, tmp_path / "mm.safetensors")
    run_dir = tmp_path / "gen"
    code, err = run_cli(["generate", "method=animatediff", "model=tiny", "prompt=x", "frames=4", "steps=1", "height=64",
                         "width=64", f"motion.path={path}", f"output_dir={run_dir}"], capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "channels" in err
    assert not run_dir.exists()


def test_generate_refuses_a_mismatched_module_with_a_user_error():
    """The library call too (no CLI check before it): a UserInputError, not diffusers' RuntimeError."""
    with pytest.raises(UserInputError, match="channels"):
        animatediff.generate(tiny_pipeline(0), other_base_adapter(), settings(steps=1))
