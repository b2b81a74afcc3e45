"""VideoGen's flow-based temporal super-resolution at inference (stylevid.sampling.tsr) and its two networks
(stylevid.models.latent_flow, stylevid.models.tsr_refiner)."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from stylevid.errors import UserInputError
from stylevid.models.latent_flow import TINY_LATENT_FLOW, LatentFlowNet, load_latent_flow
from stylevid.models.tsr_refiner import TINY_REFINER, load_tsr_refiner, refiner_scheduler, save_tsr_refiner, tsr_refiner_unet
from stylevid.sampling.motion import warp_by_flow
from stylevid.sampling.tsr import combine_frequencies, in_between, low_pass_mask, refine, slerp, temporal_super_resolve


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def constant_flow(batch, dx, dy, height, width):
    flow = torch.empty(batch, 2, height, width)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def translating_flow_net(dx: int, dy: int) -> LatentFlowNet:
    """A LatentFlowNet whose outputs are set by hand: F_t->0 = (dx, dy), F_t->1 = -(dx, dy), mask 1/2, residual 0."""
    torch.manual_seed(0)
    net = LatentFlowNet(**TINY_LATENT_FLOW).eval()
    with torch.no_grad():
        for decoder in net.decoders:
            decoder.head.weight.zero_()
            decoder.head.bias.zero_()
        net.decoders[0].head.bias[:4] = torch.tensor([dx, dy, -dx, -dy], dtype=torch.float32)
    return net


# --- warping and the coarse in-between latent ---------------------------------------------------------------------

def test_a_zero_flow_returns_the_input_latents():
    z = latents(2, 4, 6, 10)
    assert torch.allclose(warp_by_flow(z, torch.zeros(2, 2, 6, 10)), z, atol=1e-6)


def test_an_integer_translation_flow_is_the_shifted_latent_in_the_interior():
    z = latents(1, 4, 12, 12)
    dx, dy = 2, -1
    warped = warp_by_flow(z, constant_flow(1, dx, dy, 12, 12))
    shifted = torch.roll(z, shifts=(-dy, -dx), dims=(2, 3))  # out[y, x] = z[y + dy, x + dx]
    assert torch.allclose(warped[..., 2:-2, 2:-2], shifted[..., 2:-2, 2:-2], atol=1e-5)


def test_a_fresh_flow_net_is_linear_interpolation():
    """Its decoder heads start at zero: flows 0, mask 1/2, residual 0 (the baseline the flows improve on)."""
    torch.manual_seed(0)
    net = LatentFlowNet(**TINY_LATENT_FLOW)
    z0, z1 = latents(2, 4, 5, 7, seed=1), latents(2, 4, 5, 7, seed=2)  # odd sizes: padded inside, cropped back
    out = net(z0, z1, torch.tensor([0.25, 0.5]))
    assert out.frame.shape == (2, 4, 5, 7) and out.flow_t0.shape == out.flow_t1.shape == (2, 2, 5, 7)
    assert len(out.level_flows) == 3 and all(f.shape == (2, 4, 5, 7) for f in out.level_flows)
    assert torch.equal(out.mask, torch.full_like(out.mask, 0.5)) and not out.residual.any() and not out.flow_t0.any()
    assert torch.allclose(out.frame, (z0 + z1) / 2, atol=1e-6)


def test_linear_in_between_at_one_half_is_the_mean():
    z0, z1 = latents(3, 4, 8, 8, seed=1), latents(3, 4, 8, 8, seed=2)
    assert torch.allclose(in_between(z0, z1, mode="linear"), (z0 + z1) / 2, atol=1e-7)
    assert torch.allclose(in_between(z0, z1, mode="linear", t=0.25), 0.75 * z0 + 0.25 * z1, atol=1e-7)


def test_slerp_moves_along_the_great_circle_keeping_the_norm():
    # unit vectors in a plane at angles a and b: slerp(t) is the unit vector at angle a + t (b - a)
    a, b = 0.3, 1.9
    z0 = torch.tensor([[math.cos(a), math.sin(a), 0.0, 0.0]]).reshape(1, 4, 1, 1)
    z1 = torch.tensor([[math.cos(b), math.sin(b), 0.0, 0.0]]).reshape(1, 4, 1, 1)
    for t in (0.0, 0.3, 0.5, 1.0):
        angle = a + t * (b - a)
        expected = torch.tensor([math.cos(angle), math.sin(angle), 0.0, 0.0]).reshape(1, 4, 1, 1)
        assert torch.allclose(slerp(z0, z1, t), expected, atol=1e-6)
    # random unit latents, one t per sample: unit norm
    u0, u1 = latents(3, 4, 8, 8, seed=1), latents(3, 4, 8, 8, seed=2)
    u0, u1 = u0 / u0.flatten(1).norm(dim=1).view(-1, 1, 1, 1), u1 / u1.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    middle = in_between(u0, u1, mode="slerp", t=torch.tensor([0.2, 0.5, 0.9]))
    assert torch.allclose(middle.flatten(1).norm(dim=1), torch.ones(3), atol=1e-6)


def test_slerp_of_parallel_latents_is_linear():
    z0 = latents(2, 4, 8, 8)
    assert torch.allclose(in_between(z0, 2 * z0, mode="slerp", t=0.5), 1.5 * z0, atol=1e-6)
    assert torch.allclose(slerp(z0, z0 * (1 + 1e-5), 0.3), z0 * (1 + 0.3e-5), atol=1e-6)


# --- frequencies --------------------------------------------------------------------------------------------------

def test_combine_frequencies_limits_and_identity():
    x, y = latents(2, 4, 8, 10, seed=1), latents(2, 4, 8, 10, seed=2)
    for cutoff in (0.0, 0.3, 1.0):
        assert torch.allclose(combine_frequencies(x, x, cutoff), x, atol=1e-6)
    assert torch.allclose(combine_frequencies(x, y, 1.0), x, atol=1e-6)
    assert torch.equal(combine_frequencies(x, y, 0.0), y)


def test_combine_frequencies_splits_at_the_relative_radius():
    """A constant (ρ = 0), a slow cosine (ρ = 1/8 · √2 = 0.18 along x) and the checkerboard (ρ = 1) as `warped`,
    zeros as `refined`: cutoff 0.5 keeps the first two, cutoff 0.1 the constant alone."""
    height = width = 16
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    constant = torch.full((1, 1, height, width), 0.7)
    slow = torch.cos(2 * math.pi * x / 16 * 2)[None, None]  # 2 cycles over 16 px: f_x = 1/8
    checker = ((-1.0) ** (x + y))[None, None]
    warped, zeros = constant + slow + checker, torch.zeros(1, 1, height, width)
    assert torch.allclose(combine_frequencies(warped, zeros, 0.5), constant + slow, atol=1e-6)
    assert torch.allclose(combine_frequencies(warped, zeros, 0.1), constant, atol=1e-6)
    assert torch.allclose(combine_frequencies(zeros, warped, 0.5), checker, atol=1e-6)  # the high part of `refined`
    assert low_pass_mask(16, 16, 1.0).all() and not low_pass_mask(16, 16, 0.0).any()
    with pytest.raises(UserInputError, match="method.tsr.cutoff"):
        combine_frequencies(warped, zeros, 1.5)


# --- refinement -------------------------------------------------------------------------------------------------

def oracle_refiner(scheduler):
    """A refiner predicting the ε that makes the condition channels the clean latent: x0_pred = coarse at every step."""
    alphas = scheduler.alphas_cumprod

    def forward(sample, timestep):
        noisy, coarse = sample.chunk(2, dim=1)
        alpha = alphas[int(timestep)]
        return SimpleNamespace(sample=(noisy - alpha.sqrt() * coarse) / (1 - alpha).sqrt())

    return forward


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_refine_runs_ddim_on_the_concatenated_condition(strength):
    """With an ε that points at the condition and DDIM's last step onto ᾱ = 1, the refined latent is the condition."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=True)
    coarse = latents(3, 4, 4, 4)
    refined = refine(coarse, oracle_refiner(scheduler), scheduler, steps=4, generator=torch.Generator().manual_seed(0),
                     strength=strength)
    assert torch.allclose(refined, coarse, atol=1e-4)


def test_refine_does_not_depend_on_chunking_and_the_refiner_has_eight_input_channels():
    torch.manual_seed(0)
    unet = tsr_refiner_unet(**TINY_REFINER, sample_size=4).eval()
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    scheduler = refiner_scheduler(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    coarse = latents(3, 4, 4, 4)
    whole = refine(coarse, unet, scheduler, steps=2, generator=torch.Generator().manual_seed(1))
    chunked = refine(coarse, unet, scheduler, steps=2, generator=torch.Generator().manual_seed(1), chunk=1)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert not torch.allclose(whole, refine(coarse, unet, scheduler, steps=2, generator=torch.Generator().manual_seed(2)))


# --- the whole module -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_frame_count_and_key_frames_for_each_factor(factor):
    video = latents(2, 4, 3, 4, 4)
    for mode in ("linear", "slerp"):
        out = temporal_super_resolve(video, factor=factor, mode=mode)
        assert out.shape == (2, 4, (3 - 1) * factor + 1, 4, 4)
        assert torch.equal(out[:, :, ::factor], video)
    if factor == 2:  # linear: every new frame is the mean of its neighbours
        linear = temporal_super_resolve(video, factor=2, mode="linear")
        assert torch.allclose(linear[:, :, 1::2], (video[:, :, :-1] + video[:, :, 1:]) / 2, atol=1e-6)


def test_with_a_refiner_key_frames_stay_and_the_oracle_refiner_keeps_the_coarse_frames():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=True)
    video = latents(1, 4, 3, 4, 4)
    out = temporal_super_resolve(video, factor=4, mode="slerp", refiner=oracle_refiner(scheduler), scheduler=scheduler,
                                 steps=3, cutoff=0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 9, 4, 4) and torch.equal(out[:, :, ::4], video)
    assert torch.allclose(out, temporal_super_resolve(video, factor=4, mode="slerp"), atol=1e-4)


def test_a_flow_net_set_to_a_translation_gives_the_shifted_frame():
    dx, dy = 1, 2
    middle = latents(1, 4, 12, 12)
    z0 = torch.roll(middle, shifts=(dy, dx), dims=(2, 3))  # warp(z0, +d) = middle
    z1 = torch.roll(middle, shifts=(-dy, -dx), dims=(2, 3))  # warp(z1, -d) = middle
    net = translating_flow_net(dx, dy)
    video = torch.stack([z0, z1], dim=2)  # (1, 4, 2, 12, 12)
    out = temporal_super_resolve(video, factor=2, mode="flow", flow_net=net)
    assert out.shape == (1, 4, 3, 12, 12)
    assert torch.allclose(out[:, :, 1, 3:-3, 3:-3], middle[..., 3:-3, 3:-3], atol=1e-5)
    flows = net(z0, z1, 0.5)
    assert torch.allclose(flows.flow_t0, constant_flow(1, dx, dy, 12, 12)) and torch.allclose(flows.flow_t1, -flows.flow_t0)


def test_bad_settings_are_one_line_user_errors():
    video = latents(1, 4, 2, 4, 4)
    for factor in (3, 16, 0, 2.0):
        with pytest.raises(UserInputError, match="method.tsr.factor"):
            temporal_super_resolve(video, factor=factor, mode="linear")
    with pytest.raises(UserInputError, match="method.tsr.mode"):
        temporal_super_resolve(video, factor=2, mode="cubic")
    with pytest.raises(UserInputError, match="LatentFlowNet"):
        temporal_super_resolve(video, factor=2, mode="flow")


# --- weights ----------------------------------------------------------------------------------------------------

def test_latent_flow_net_save_load_round_trip(tmp_path):
    net = translating_flow_net(1, 0)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # heads away from zero: the output depends on all of it
    net.save_pretrained(tmp_path / "flow")
    loaded = load_latent_flow(tmp_path / "flow", key="method.tsr.flow_path")
    assert list(loaded.config.block_out_channels) == list(net.config.block_out_channels) == [8, 16, 16]
    z0, z1 = latents(2, 4, 8, 8, seed=1), latents(2, 4, 8, 8, seed=2)
    assert torch.equal(loaded(z0, z1, 0.5).frame, net(z0, z1, 0.5).frame)
    UNet2DModel(block_out_channels=(8,), down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                norm_num_groups=8).save_pretrained(tmp_path / "unet")
    with pytest.raises(UserInputError, match="method.tsr.flow_path=.*UNet2DModel, not a LatentFlowNet"):
        load_latent_flow(tmp_path / "unet", key="method.tsr.flow_path")


def test_refiner_directory_carries_its_training_schedule(tmp_path):
    torch.manual_seed(0)
    unet = tsr_refiner_unet(**TINY_REFINER, sample_size=4)
    training = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    save_tsr_refiner(tmp_path / "refiner", unet, refiner_scheduler(training))
    loaded, scheduler = load_tsr_refiner(tmp_path / "refiner", key="method.tsr.refiner_path")
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.alphas_cumprod, training.alphas_cumprod)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in unet.state_dict().items())
    with pytest.raises(UserInputError, match="tsr_refiner.norm_num_groups"):
        tsr_refiner_unet((32, 60), norm_num_groups=8)
    with pytest.raises(UserInputError, match="method.tsr.refiner_path=.*not a temporal-SR refiner"):
        LatentFlowNet(**TINY_LATENT_FLOW).save_pretrained(tmp_path / "flow")
        load_tsr_refiner(tmp_path / "flow", key="method.tsr.refiner_path")
