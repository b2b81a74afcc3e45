"""Inflation of an SD 1.x image UNet into a video UNet (stylevid.models.inflate).

Tiny image UNets with SD 1.x's conventions: `attention_head_dim` is a head *count* (an int for every level,
or one per level) and proj_in/proj_out are 1x1 convs (use_linear_projection=False), the two things
diffusers' UNet3DConditionModel reads differently.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from stylevid.errors import UserInputError
from stylevid.models.inflate import VideoUNet, is_condition_key, is_new_key, is_temporal_key

TEXT_DIM = 32
FRAMES = 3
SIZE = 8

# name -> extra UNet2DConditionModel kwargs. "sd15": 8 heads everywhere, as SD 1.5's config (head widths
# 4 and 8, so UNet3D's one head dimension gives level 1 the wrong head count). "per_level": a tuple of head
# counts (head widths 8 and 32) and a time_cond_proj_dim, whose cond_proj must map too.
IMAGE_UNETS = {
    "sd15": dict(attention_head_dim=8),
    "per_level": dict(attention_head_dim=(4, 2), time_cond_proj_dim=8),
}


def image_unet(name: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=8,
        use_linear_projection=False,
        **IMAGE_UNETS[name],
    ).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module", params=sorted(IMAGE_UNETS))
def unet2d(request):
    return image_unet(request.param)


def inputs(unet2d: UNet2DConditionModel, batch: int = 2, frames: int = FRAMES, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(
        sample=torch.randn(batch, 4, frames, SIZE, SIZE, generator=generator),
        timestep=torch.tensor(37),
        encoder_hidden_states=torch.randn(batch, 5, TEXT_DIM, generator=generator),
    )
    if unet2d.config.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(batch, unet2d.config.time_cond_proj_dim, generator=generator)
    return kwargs


@torch.no_grad()
def per_frame(unet2d: UNet2DConditionModel, sample, timestep, encoder_hidden_states, timestep_cond=None, encoder_attention_mask=None):
    """The image UNet applied to every frame alone, laid out as (B, C, F, H, W)."""
    batch, channels, frames, height, width = sample.shape
    images = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    repeat = lambda t: None if t is None else t.repeat_interleave(frames, dim=0)  # noqa: E731
    out = unet2d(
        images,
        timestep,
        repeat(encoder_hidden_states),
        timestep_cond=repeat(timestep_cond),
        encoder_attention_mask=repeat(encoder_attention_mask),
    ).sample
    return out.reshape(batch, frames, -1, height, width).permute(0, 2, 1, 3, 4)


def video_out(video: VideoUNet, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return video(**kwargs).sample


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def spatial_attentions(model) -> list[Attention]:
    return [m for t in model.modules() if isinstance(t, Transformer2DModel) for m in t.modules() if isinstance(m, Attention)]


# --- key accounting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_position_encoding", [False, True])
def test_every_image_key_maps_and_only_temporal_keys_are_new(unet2d, frame_position_encoding):
    video = VideoUNet.inflate(unet2d, frame_position_encoding=frame_position_encoding, extra_in_channels=4)
    report = video.inflation_report
    image_state, video_state = unet2d.state_dict(), video.state_dict()

    # Every image weight mapped, none unused, each to its own name.
    assert len(report.mapped) == len(image_state)
    assert set(report.mapped) == set(image_state)
    assert all(source == target for source, target in report.mapped.items())
    # The video UNet's keys are exactly the mapped ones plus the new ones, and the new ones are temporal.
    assert set(report.mapped.values()) | set(report.new) == set(video_state)
    assert not set(report.mapped.values()) & set(report.new)
    assert report.new and all(is_temporal_key(key) for key in report.new)
    assert not any(is_temporal_key(key) for key in report.mapped)
    temporal_transformers = [m for m in video.modules() if isinstance(m, TransformerTemporalModel)]
    position_keys = [key for key in report.new if key.endswith("frame_pos_embed")]
    assert len(position_keys) == (len(temporal_transformers) if frame_position_encoding else 0)
    if unet2d.config.time_cond_proj_dim:
        assert "time_embedding.cond_proj.weight" in report.mapped

    # 1x1-conv projections (use_linear_projection=False) reshaped: proj_in and proj_out of each transformer.
    image_transformers = [m for m in unet2d.modules() if isinstance(m, Transformer2DModel)]
    assert len(report.reshaped) == 2 * len(image_transformers)
    assert all(key.endswith(("proj_in.weight", "proj_out.weight")) for key in report.reshaped)
    assert report.widened == ["conv_in.weight"]

    # The values: equal to the image weights (reshaped / widened with zeros where listed).
    for key, weight in image_state.items():
        got = video_state[key]
        if key in report.reshaped:
            got = got[:, :, None, None]
        if key in report.widened:
            assert torch.equal(got[:, 4:], torch.zeros_like(got[:, 4:]))
            got = got[:, :4]
        assert torch.equal(got, weight), key


def test_spatial_attention_keeps_the_image_models_head_count(unet2d):
    video = VideoUNet.inflate(unet2d)
    ours, theirs = spatial_attentions(video), spatial_attentions(unet2d)
    assert len(ours) == len(theirs) > 0
    assert [(a.heads, a.scale) for a in ours] == [(a.heads, a.scale) for a in theirs]

    # The trap this guards against: UNet3D built from the same config splits some level differently.
    accepted = inspect.signature(UNet3DConditionModel.__init__).parameters
    plain = UNet3DConditionModel(**{k: v for k, v in video.config.items() if k in accepted})
    assert plain.config.block_out_channels == video.config.block_out_channels
    assert [a.heads for a in spatial_attentions(plain)] != [a.heads for a in theirs]


# --- step 0: the image model, frame by frame ----------------------------------------------------------------


@pytest.mark.parametrize("frame_position_encoding", [False, True])
def test_step0_video_unet_is_the_image_unet_per_frame(unet2d, frame_position_encoding):
    video = VideoUNet.inflate(unet2d, frame_position_encoding=frame_position_encoding).eval()
    kwargs = inputs(unet2d)
    out, reference = video_out(video, **kwargs), per_frame(unet2d, **kwargs)
    assert out.shape == kwargs["sample"].shape
    assert max_diff(out, reference) <= 1e-5


def test_step0_holds_with_the_classic_processor_and_a_text_mask():
    # AttnProcessor (unlike SDPA) uses attn.scale, which UNet3D set from its own head width.
    unet2d = image_unet("sd15")
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True).eval()
    unet2d.set_attn_processor(AttnProcessor())
    video.set_attn_processor(AttnProcessor())
    kwargs = inputs(unet2d)
    kwargs["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert max_diff(video_out(video, **kwargs), per_frame(unet2d, **kwargs)) <= 1e-5
    # The mask is used: dropping it changes the output.
    no_mask = {k: v for k, v in kwargs.items() if k != "encoder_attention_mask"}
    assert max_diff(video_out(video, **no_mask), video_out(video, **kwargs)) > 1e-4


def test_widened_conv_in_is_still_the_image_unet_at_step0(unet2d):
    video = VideoUNet.inflate(unet2d, extra_in_channels=4).eval()
    assert video.conv_in.in_channels == 8 and video.config.extra_in_channels == 4
    kwargs = inputs(unet2d)
    condition = 3 * torch.randn(2, 4, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    reference = per_frame(unet2d, **kwargs)
    assert max_diff(video_out(video, **kwargs, extra_input=condition), reference) <= 1e-5
    concatenated = dict(kwargs, sample=torch.cat([kwargs["sample"], condition], dim=1))
    assert max_diff(video_out(video, **concatenated), reference) <= 1e-5
    # The condition path is wired: once its weights move, the condition changes the output.
    with torch.no_grad():
        video.conv_in.weight[:, 4:] = 0.1
    assert max_diff(video_out(video, **kwargs, extra_input=condition), reference) > 1e-3
    with pytest.raises(UserInputError, match="channels"):
        video(**kwargs)  # the condition is missing


# --- image mode after training ---------------------------------------------------------------------------------


def train_temporal(video: VideoUNet, unet2d, steps: int = 3, lr: float = 1e-2) -> None:
    """A few Adam steps on the temporal parameters only, towards a random target.

    Three, because of the zero-initialised proj_out: step 1 moves only proj_out (and the last temporal
    convs), step 2 the rest of the temporal branch, frame-position encodings included."""
    optimizer = torch.optim.Adam([p for _, p in video.temporal_parameters()], lr=lr)
    kwargs = inputs(unet2d, batch=1, seed=7)
    target = torch.randn_like(kwargs["sample"])
    video.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(video(**kwargs).sample, target)
        loss.backward()
        optimizer.step()
    video.eval()


def test_image_mode_is_the_image_unet_after_temporal_training(unet2d):
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True)
    spatial_before = {name: p.detach().clone() for name, p in video.spatial_parameters()}
    train_temporal(video, unet2d)
    # The temporal layers moved off the identity (zero-initialised parts included), the spatial ones did not.
    assert all(torch.equal(p, spatial_before[name]) for name, p in video.spatial_parameters())
    assert video.transformer_in.proj_out.weight.abs().max() > 0
    assert video.transformer_in.proj_in.frame_pos_embed.abs().max() > 0
    assert video.mid_block.temp_convs[0].conv4[-1].weight.abs().max() > 0

    kwargs = inputs(unet2d)
    reference = per_frame(unet2d, **kwargs)
    assert max_diff(video_out(video, **kwargs), reference) > 1e-3  # video mode is no longer the image model
    assert max_diff(video_out(video, **kwargs, image_mode=True), reference) <= 1e-5
    with video.as_image_model():
        assert max_diff(video_out(video, **kwargs), reference) <= 1e-5
    assert max_diff(video_out(video, **kwargs), reference) > 1e-3  # the context manager restores video mode

    # num_frames=1 is not image mode (the trap): the temporal conv's centre tap and bias still act.
    one = dict(kwargs, sample=kwargs["sample"][:, :, :1])
    one_reference = per_frame(unet2d, **one)
    assert max_diff(video_out(video, **one), one_reference) > 1e-3
    # A plain image batch (B, C, H, W) in image mode comes back as (B, C, H, W), equal to the image UNet.
    image = dict(one, sample=one["sample"][:, :, 0])
    out = video_out(video, **image, image_mode=True)
    assert out.shape == image["sample"].shape
    assert max_diff(out, one_reference[:, :, 0]) <= 1e-5


# --- gradient checkpointing --------------------------------------------------------------------------------


def loss_and_grads(video: VideoUNet, kwargs: dict, target: torch.Tensor):
    video.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # the temporal convs' dropout (p=0.1) draws the same masks in both runs
    loss = torch.nn.functional.mse_loss(video(**kwargs).sample, target)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in video.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    unet2d = image_unet("per_level")
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True, extra_in_channels=4)
    with torch.no_grad():  # temporal layers off the identity, so gradients flow through all of them
        generator = torch.Generator().manual_seed(3)
        for _, p in video.temporal_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    video.train()
    kwargs = inputs(unet2d)
    kwargs["extra_input"] = torch.randn(2, 4, FRAMES, SIZE, SIZE)
    target = torch.randn_like(kwargs["sample"])

    loss_plain, grads_plain = loss_and_grads(video, kwargs, target)

    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kw):
        calls.append(1)
        return checkpoint(*args, **kw)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    video.enable_gradient_checkpointing()
    assert video.gradient_checkpointing
    loss_ckpt, grads_ckpt = loss_and_grads(video, kwargs, target)

    # One checkpoint around every resnet, temporal conv, spatial transformer and temporal transformer
    # (transformer_in included): 25 for this two-level UNet.
    blocks = [*video.down_blocks, video.mid_block, *video.up_blocks]
    layers = ("resnets", "temp_convs", "attentions", "temp_attentions")
    expected = 1 + sum(len(getattr(block, name, [])) for block in blocks for name in layers)
    assert len(calls) == expected == 25

    assert torch.allclose(loss_ckpt, loss_plain, rtol=1e-6, atol=0)
    assert set(grads_ckpt) == set(grads_plain)
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7), name
    assert grads_plain["transformer_in.proj_in.frame_pos_embed"].abs().max() > 0

    # In eval (or under no_grad) nothing is checkpointed.
    calls.clear()
    video.eval()
    video_out(video, **kwargs)
    assert not calls
    video.disable_gradient_checkpointing()
    assert not video.gradient_checkpointing


# --- save / load --------------------------------------------------------------------------------------------


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    unet2d = image_unet("sd15")
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True, max_frames=8, extra_in_channels=4)
    with torch.no_grad():  # non-trivial temporal weights and encodings, so the round trip has something to keep
        generator = torch.Generator().manual_seed(4)
        for _, p in video.temporal_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    video.eval()
    video.save_pretrained(tmp_path / "video_unet")
    loaded = VideoUNet.from_pretrained(tmp_path / "video_unet").eval()

    assert tuple(loaded.config.spatial_attention_heads) == (8, 8)
    assert loaded.config.frame_position_encoding and loaded.config.max_frames == 8
    assert loaded.config.extra_in_channels == 4 and loaded.config.in_channels == 8
    assert [a.heads for a in spatial_attentions(loaded)] == [a.heads for a in spatial_attentions(unet2d)]
    state, loaded_state = video.state_dict(), loaded.state_dict()
    assert set(state) == set(loaded_state) and all(torch.equal(state[k], loaded_state[k]) for k in state)

    kwargs = dict(inputs(unet2d), extra_input=torch.randn(2, 4, FRAMES, SIZE, SIZE))
    assert max_diff(video_out(loaded, **kwargs), video_out(video, **kwargs)) == 0
    assert max_diff(video_out(loaded, **kwargs, image_mode=True), video_out(video, **kwargs, image_mode=True)) == 0


# --- refusals -----------------------------------------------------------------------------------------------


def test_refuses_what_the_video_layout_cannot_hold():
    with pytest.raises(UserInputError, match="upcast_attention"):
        VideoUNet.inflate(
            UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_DIM,
                norm_num_groups=8,
                upcast_attention=True,
            )
        )
    unet2d = image_unet("sd15")
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True, max_frames=2).eval()
    with pytest.raises(UserInputError, match="max_frames"):
        video(**inputs(unet2d, frames=3))
    video_out(video, **inputs(unet2d, frames=3), image_mode=True)  # image mode has no frame limit


# --- scalar conditions: FPS and noise-augmentation level ------------------------------------------------------


def test_condition_embeddings_are_new_zero_initialised_parameters_and_change_nothing_at_step0(unet2d):
    video = VideoUNet.inflate(unet2d, fps_conditioning=True, noise_level_conditioning=True).eval()
    report = video.inflation_report
    condition_keys = {key for key in report.new if is_condition_key(key)}
    assert condition_keys == {f"{name}.{layer}.{kind}" for name in ("fps_embedding", "noise_level_embedding")
                              for layer in ("linear_1", "linear_2") for kind in ("weight", "bias")}
    assert all(is_new_key(key) for key in report.new) and not any(is_temporal_key(key) for key in condition_keys)
    assert {name for name, _ in video.new_parameters()} == {name for name, _ in video.temporal_parameters()} | condition_keys
    assert {name for name, _ in video.condition_parameters()} == condition_keys
    assert not condition_keys & {name for name, _ in video.spatial_parameters()}
    assert torch.count_nonzero(video.fps_embedding.linear_2.weight) == 0

    kwargs = inputs(unet2d)
    reference = per_frame(unet2d, **kwargs)
    for scalars in ({}, {"fps": torch.tensor([4.0, 30.0])}, {"fps": 8.0, "noise_level": torch.tensor([0, 999])}):
        assert max_diff(video_out(video, **kwargs, **scalars), reference) <= 1e-5

    # Trained, each embedding steers the output by its value: the conditions are wired into the time embedding.
    optimizer = torch.optim.Adam([p for _, p in video.condition_parameters()], lr=1e-2)
    video.train()
    for _ in range(2):
        optimizer.zero_grad()
        out = video(**kwargs, fps=torch.tensor([4.0, 30.0]), noise_level=torch.tensor([10, 900])).sample
        torch.nn.functional.mse_loss(out, torch.zeros_like(out)).backward()
        optimizer.step()
    video.eval()
    assert video.fps_embedding.linear_2.weight.abs().max() > 0 and video.noise_level_embedding.linear_2.weight.abs().max() > 0
    base = video_out(video, **kwargs, fps=8.0, noise_level=100)
    assert max_diff(video_out(video, **kwargs, fps=24.0, noise_level=100), base) > 1e-4
    assert max_diff(video_out(video, **kwargs, fps=8.0, noise_level=600), base) > 1e-4
    assert max_diff(video_out(video, **kwargs), reference) <= 1e-5  # None adds no embedding

    plain = VideoUNet.inflate(unet2d).eval()
    with pytest.raises(UserInputError, match="fps_conditioning"):
        plain(**kwargs, fps=8.0)
    with pytest.raises(UserInputError, match="noise_level_conditioning"):
        VideoUNet.inflate(unet2d, fps_conditioning=True)(**kwargs, noise_level=3)


def test_condition_settings_survive_save_pretrained(tmp_path):
    unet2d = image_unet("sd15")
    video = VideoUNet.inflate(unet2d, fps_conditioning=True, noise_level_conditioning=True)
    with torch.no_grad():
        video.fps_embedding.linear_2.weight.normal_(generator=torch.Generator().manual_seed(2))
    video.save_pretrained(tmp_path / "video_unet")
    loaded = VideoUNet.from_pretrained(tmp_path / "video_unet").eval()
    assert loaded.config.fps_conditioning and loaded.config.noise_level_conditioning
    assert torch.equal(loaded.fps_embedding.linear_2.weight, video.fps_embedding.linear_2.weight)


def test_extended_keeps_every_trained_weight_and_what_the_model_computes(unet2d):
    video = VideoUNet.inflate(unet2d, frame_position_encoding=True, extra_in_channels=4, fps_conditioning=True)
    with torch.no_grad():  # trained: every parameter off its initial value
        generator = torch.Generator().manual_seed(3)
        for p in video.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    video.eval()
    grown = video.extended(extra_in_channels=8, noise_level_conditioning=True).eval()
    assert (grown.config.in_channels, grown.config.extra_in_channels) == (12, 8) and grown.config.noise_level_conditioning
    assert grown.inflation_report.widened == ["conv_in.weight"]
    assert set(grown.inflation_report.new) == {k for k in grown.state_dict() if k.startswith("noise_level_embedding.")}
    state, grown_state = video.state_dict(), grown.state_dict()
    assert all(torch.equal(grown_state[k][:, :8] if k == "conv_in.weight" else grown_state[k], v) for k, v in state.items())

    kwargs = dict(inputs(unet2d), fps=torch.tensor([5.0, 12.0]))
    condition = torch.randn(2, 4, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    added = 5 * torch.randn(2, 4, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    want = video_out(video, **kwargs, extra_input=condition)
    got = video_out(grown, **kwargs, extra_input=torch.cat([condition, added], 1), noise_level=torch.tensor([3, 700]))
    assert max_diff(got, want) <= 1e-5
    with pytest.raises(UserInputError, match="drop trained conv_in"):
        video.extended(extra_in_channels=0)
    with pytest.raises(UserInputError, match="drop a trained embedding"):
        video.extended(fps_conditioning=False)
