"""VideoGen's cascaded latent video diffusion stages (stylevid.models.videogen, stylevid.sampling.cascade).

Tiny image UNets with SD 1.x's conventions (head counts, 1x1-conv projections). The peer for the base stage's
sampler is diffusers' TextToVideoSDPipeline on a UNet3DConditionModel holding the same weights.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel

from stylevid.errors import UserInputError
from stylevid.models.inflate import VideoUNet
from stylevid.models.tiny import TINY_TEXT_DIM, sd_ddim_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_vae
from stylevid.models.videogen import (
    StageInfo,
    build_stage,
    load_stage,
    read_stage_info,
    reference_condition,
    save_stage,
    stage_kind,
    stage_record,
    super_resolution_from,
    upsample_condition,
)
from stylevid.sampling.cascade import sample_stage
from stylevid.sampling.vae import decode_to_uint8

FRAMES = 3
SIZE = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


def image_unet(seed: int = 0) -> UNet2DConditionModel:
    """8 and 16 heads (SD 1.x counts): a head width of 4 at both levels, so diffusers' UNet3D built with
    attention_head_dim=4 splits the heads the same way (what the peer pipeline needs)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SIZE, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM, norm_num_groups=8, attention_head_dim=(8, 16), use_linear_projection=False,
    ).eval()


@pytest.fixture(scope="module")
def unet2d():
    return image_unet()


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def per_frame(unet2d, sample, timestep, text):
    batch, channels, frames, height, width = sample.shape
    images = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    out = unet2d(images, timestep, text.repeat_interleave(frames, dim=0)).sample
    return out.reshape(batch, frames, -1, height, width).permute(0, 2, 1, 3, 4)


def perturb(model, keep=lambda name: False, scale=0.05, seed=3):
    """Move every parameter off its initial value (as training would), except those `keep` names."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not keep(name):
                p.add_(scale * torch.randn(p.shape, generator=generator))


# --- building a stage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_a_fresh_stage_is_the_image_unet_per_frame(unet2d, stage):
    video = build_stage(unet2d, stage=stage).eval()
    extra = 8 if stage == "sr" else 4
    assert (video.config.in_channels, video.config.extra_in_channels) == (4 + extra, extra)
    assert video.config.fps_conditioning and video.config.noise_level_conditioning == (stage == "sr")
    assert video.config.frame_position_encoding and stage_kind(video) == stage
    # The condition embeddings are new parameters (they train), not spatial ones.
    new = {name for name, _ in video.new_parameters()}
    assert {"fps_embedding.linear_2.weight", "fps_embedding.linear_1.weight"} <= new
    assert ("noise_level_embedding.linear_2.weight" in new) == (stage == "sr")
    assert not new & {name for name, _ in video.spatial_parameters()}

    latents, text = randn(2, 4, FRAMES, SIZE, SIZE, seed=1), randn(2, 5, TINY_TEXT_DIM, seed=2)
    conditions = [reference_condition(3 * randn(2, 4, SIZE, SIZE, seed=4), FRAMES)]
    scalars = {"fps": torch.tensor([4.0, 24.0])}
    if stage == "sr":
        conditions.append(upsample_condition(randn(2, 4, FRAMES, SIZE // 2, SIZE // 2, seed=5), torch.tensor([0, 300]),
                                             DDPMScheduler(), torch.Generator().manual_seed(6)))
        scalars["noise_level"] = torch.tensor([0, 300])
    with torch.no_grad():
        out = video(latents, 37, text, extra_input=torch.cat(conditions, dim=1), **scalars).sample
    assert (out - per_frame(unet2d, latents, 37, text)).abs().max() <= 1e-5


def test_build_stage_refuses_an_unknown_stage(unet2d):
    with pytest.raises(UserInputError, match="stage"):
        build_stage(unet2d, stage="sr3")


# --- the conditions -----------------------------------------------------------------------------------------------


def test_reference_condition_puts_the_reference_on_frame_0_and_zeros_elsewhere():
    reference = randn(2, 4, 6, 5)
    condition = reference_condition(reference, 4)
    assert condition.shape == (2, 4, 4, 6, 5)
    assert torch.equal(condition[:, :, 0], reference)
    assert torch.count_nonzero(condition[:, :, 1:]) == 0
    none = reference_condition(None, 4, shape=(2, 6, 5))
    assert none.shape == (2, 4, 4, 6, 5) and torch.count_nonzero(none) == 0
    with pytest.raises(UserInputError, match="reference latent"):
        reference_condition(randn(2, 3, 6, 5), 4)


def test_upsample_condition_is_bilinear_x2_then_the_forward_process():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    low = randn(3, 4, 2, 4, 5)
    levels = torch.tensor([0, 250, 999])
    out = upsample_condition(low, levels, scheduler, torch.Generator().manual_seed(7))
    assert out.shape == (3, 4, 2, 8, 10)
    # Level 0: exactly the bilinear upsampling of each frame (the scheduler's own t=0 would add std 0.03 of noise).
    bilinear = F.interpolate(low[0].permute(1, 0, 2, 3), scale_factor=2, mode="bilinear").permute(1, 0, 2, 3)
    assert torch.equal(out[0], bilinear)
    # Level n > 0: add_noise at timestep n, with the noise drawn from the generator in the output's shape.
    up = torch.stack([F.interpolate(low[i].permute(1, 0, 2, 3), scale_factor=2, mode="bilinear").permute(1, 0, 2, 3)
                      for i in range(3)])
    noise = torch.randn(up.shape, generator=torch.Generator().manual_seed(7))
    expected = scheduler.add_noise(up, noise, levels)
    assert torch.allclose(out[1:], expected[1:], atol=1e-6)
    alpha = scheduler.alphas_cumprod[999].sqrt()
    assert (out[2] - alpha * up[2]).std() > 0.9  # the noisiest level is nearly all noise
    with pytest.raises(UserInputError, match="noise_level"):
        upsample_condition(low, torch.tensor([0, 1, 1000]), scheduler, None)


# --- growing the super-resolution stage from the base ---------------------------------------------------------


def test_super_resolution_from_a_trained_base_keeps_its_weights_and_computes_what_it_computes(unet2d):
    base = build_stage(unet2d, stage="base")
    perturb(base)  # "trained": every weight moved, the reference channels and the FPS embedding included
    sr = super_resolution_from(base).eval()
    base.eval()
    assert stage_kind(sr) == "sr" and sr.config.in_channels == 12
    state, grown = base.state_dict(), sr.state_dict()
    assert set(state) < set(grown)
    assert all(torch.equal(grown[k][:, :8] if k == "conv_in.weight" else grown[k], v) for k, v in state.items())
    assert torch.count_nonzero(grown["conv_in.weight"][:, 8:]) == 0
    assert set(grown) - set(state) == {f"noise_level_embedding.{p}" for p in
                                       ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")}
    assert torch.count_nonzero(grown["noise_level_embedding.linear_2.weight"]) == 0

    latents, text = randn(2, 4, FRAMES, SIZE, SIZE, seed=1), randn(2, 5, TINY_TEXT_DIM, seed=2)
    reference = reference_condition(randn(2, 4, SIZE, SIZE, seed=4), FRAMES)
    upsampled = 2 * randn(2, 4, FRAMES, SIZE, SIZE, seed=5)
    with torch.no_grad():
        want = base(latents, 500, text, extra_input=reference, fps=8.0).sample
        got = sr(latents, 500, text, extra_input=torch.cat([reference, upsampled], 1), fps=8.0, noise_level=700).sample
    assert (got - want).abs().max() <= 1e-5
    assert (want - per_frame(unet2d, latents, 500, text)).abs().max() > 1e-2  # the base really is trained
    # From a super-resolution stage, the next one (Section 3.5: the third from the second) is an exact copy.
    again = super_resolution_from(sr).state_dict()
    assert all(torch.equal(again[k], v) for k, v in grown.items())


# --- a stage on disk --------------------------------------------------------------------------------------------


def test_a_saved_stage_loads_back_exactly(unet2d, tmp_path):
    sr = build_stage(unet2d, stage="sr", max_frames=8)
    perturb(sr)
    sr.eval()
    info = StageInfo(index=2, latent_size=SIZE, frames=FRAMES, base_model={"name": "tiny"})
    save_stage(tmp_path / "run" / "videogen_stage", sr, info)
    # A run directory, its stage directory and a plain VideoUNet.from_pretrained all give the same model.
    loaded = load_stage(tmp_path / "run")
    assert isinstance(loaded, VideoUNet) and stage_record(loaded) == stage_record(sr)
    assert read_stage_info(tmp_path / "run") == info
    plain = VideoUNet.from_pretrained(tmp_path / "run" / "videogen_stage")
    state = sr.state_dict()
    for model in (loaded, plain):
        got = model.state_dict()
        assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())
    kwargs = dict(sample=randn(1, 12, FRAMES, SIZE, SIZE), timestep=10, encoder_hidden_states=randn(1, 5, TINY_TEXT_DIM),
                  fps=6.0, noise_level=100)
    with torch.no_grad():
        assert torch.equal(loaded(**kwargs).sample, sr(**kwargs).sample)
    # A state dict (what the trainer saves: gathered, EMA) goes in under the same keys, with or without DDP's prefix.
    save_stage(tmp_path / "ddp", sr, info, {f"module.{k}": v for k, v in state.items()})
    got = load_stage(tmp_path / "ddp").state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    assert json.loads((tmp_path / "ddp" / "stage.json").read_text())["index"] == 2
    with pytest.raises(UserInputError, match="videogen.init=.*not a VideoGen stage"):
        load_stage(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        load_stage(tmp_path / "missing")


# --- sampling ---------------------------------------------------------------------------------------------------


def unet3d_peer(stage: VideoUNet) -> UNet3DConditionModel:
    """diffusers' UNet3DConditionModel holding the stage's weights, its input cut back to the 4 latent channels
    (the zeroed reference channels dropped) and without the (zeroed) FPS embedding and frame-position encodings."""
    accepted = inspect.signature(UNet3DConditionModel.__init__).parameters
    config = {k: v for k, v in stage.config.items() if k in accepted}
    peer = UNet3DConditionModel(**{**config, "in_channels": 4})
    state = {k: v for k, v in stage.state_dict().items() if "frame_pos_embed" not in k and not k.startswith("fps_embedding.")}
    state["conv_in.weight"] = state["conv_in.weight"][:, :4]
    peer.load_state_dict(state, strict=True)
    return peer.eval()


def test_the_base_stage_samples_what_text_to_video_sd_samples(unet2d):
    """With its reference channels and FPS embedding at zero, the base stage is a plain text-to-video UNet3D: the
    cascade's sampler on it gives the frames diffusers' TextToVideoSDPipeline gives on the same weights."""
    stage = build_stage(unet2d, stage="base")
    # Temporal layers (and the FPS MLP's first layer) off the identity: a video model, not the image model per frame.
    perturb(stage, keep=lambda name: name.startswith(("conv_in", "fps_embedding.linear_2")) or "frame_pos_embed" in name)
    stage.eval()
    tokenizer = tiny_tokenizer()
    vae, text_encoder = tiny_vae(0), tiny_text_encoder(0, vocab_size=len(tokenizer))
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet3d_peer(stage),
                                 scheduler=sd_ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    prompt, steps, scale, frames = "a red square moving right", 3, 7.5, 4
    theirs = pipe(prompt, num_frames=frames, height=32, width=32, num_inference_steps=steps, guidance_scale=scale,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    theirs = (np.asarray(theirs) * 255).round().astype(np.uint8)

    text, negative = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True)
    seen = []
    latents = sample_stage(stage, sd_ddim_scheduler(), text_embeddings=text, negative_embeddings=negative,
                           reference_latent=randn(1, 4, 4, 4, seed=9), low_resolution=None, fps=8.0, noise_level=0,
                           frames=frames, height_latent=4, width_latent=4, steps=steps, guidance_scale=scale,
                           generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: seen.append(int(t)))
    assert latents.shape == (1, 4, frames, 4, 4) and len(seen) == steps
    ours = decode_to_uint8(vae, latents[0].permute(1, 0, 2, 3))
    assert ours.shape == theirs.shape == (frames, 32, 32, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    assert np.abs(ours[0].astype(int) - ours[-1].astype(int)).max() > 1  # frames differ: a real video sample


def sample(stage, **overrides):
    kwargs = dict(text_embeddings=randn(1, 5, TINY_TEXT_DIM, seed=1), negative_embeddings=randn(1, 5, TINY_TEXT_DIM, seed=2),
                  reference_latent=randn(1, 4, SIZE, SIZE, seed=3), low_resolution=None, fps=8.0, noise_level=0,
                  frames=FRAMES, height_latent=SIZE, width_latent=SIZE, steps=2, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0))
    kwargs.update(overrides)
    return sample_stage(stage, DDIMScheduler.from_config(sd_ddim_scheduler().config), **kwargs)


def test_reference_mode_none_is_the_zero_reference_and_a_trained_reference_changes_the_sample(unet2d):
    stage = build_stage(unet2d, stage="base")
    perturb(stage)
    stage.eval()
    with_reference, none = sample(stage), sample(stage, reference_mode="none")
    assert torch.equal(none, sample(stage, reference_latent=None))
    assert (with_reference - none).abs().max() > 1e-3
    # Only frame 0 carries the reference, but temporal layers spread it: later frames change too.
    assert (with_reference[:, :, -1] - none[:, :, -1]).abs().max() > 1e-4
    assert (sample(stage, fps=24.0) - with_reference).abs().max() > 1e-4  # the FPS embedding is in the loop
    with pytest.raises(UserInputError, match="reference_mode"):
        sample(stage, reference_mode="last_frame")
    with pytest.raises(UserInputError, match="low-resolution"):
        sample(stage, low_resolution=randn(1, 4, FRAMES, SIZE // 2, SIZE // 2))


def test_a_super_resolution_stage_just_grown_from_the_base_samples_what_the_base_samples(unet2d):
    """Its low-resolution channels and noise-level embedding start at zero, and the augmentation noise is drawn after
    the initial noise, so from one seed the new stage's sample is the base's (DDIM with eta 0 draws nothing else)."""
    base = build_stage(unet2d, stage="base")
    perturb(base)
    sr = super_resolution_from(base).eval()
    base.eval()
    low = randn(1, 4, FRAMES, SIZE // 2, SIZE // 2, seed=8)
    grown = sample(sr, low_resolution=low, noise_level=250)
    assert (grown - sample(base)).abs().max() <= 1e-5
    # Once its low-resolution channels train, the lower stage's output and its noise level steer the sample.
    with torch.no_grad():
        sr.conv_in.weight[:, 8:] = 0.1
    assert (sample(sr, low_resolution=low, noise_level=250) - grown).abs().max() > 1e-3
    assert (sample(sr, low_resolution=low, noise_level=0) - sample(sr, low_resolution=low, noise_level=250)).abs().max() > 1e-3
    with pytest.raises(UserInputError, match="low_resolution"):
        sample(sr)
    with pytest.raises(UserInputError, match="low_resolution must be"):
        sample(sr, low_resolution=randn(1, 4, FRAMES, SIZE, SIZE))
