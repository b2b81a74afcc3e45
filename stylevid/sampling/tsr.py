"""VideoGen's flow-based temporal super-resolution (paper Section 3.3), at inference: pure functions on latents.

One x2 step, for every pair of neighbouring latents (z_0, z_1):
  1. coarse = the in-between latent at t = 1/2: warped by the latent flow net (`mode=flow`,
     `stylevid.models.latent_flow.LatentFlowNet`), or linear / spherical interpolation (`linear`, `slerp`: the
     paper's Figure 6 ablation replaces the flow by slerp);
  2. refined = the refinement diffusion network denoising from noise with the coarse latent as a condition
     (concatenated to its input, `stylevid.models.tsr_refiner`), sampled with DDIM;
  3. the new frame = low spatial frequencies of the coarse latent + high frequencies of the refined one
     ("consistent to the observation [8]", ILVR: the low frequencies fix the content, the diffusion model fills in
     the detail).
The step runs log2(factor) times: "three times and get 8x upsampled video representations". Key frames are kept
exactly; F frames become (F - 1) x factor + 1.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserInputError

MODES = ("flow", "linear", "slerp")
FACTORS = (1, 2, 4, 8)
# slerp is ill-conditioned when the two latents are (anti)parallel (sin θ -> 0); there it is linear interpolation,
# the limit of slerp as θ -> 0 (the threshold of the common slerp recipes for diffusion latents)
PARALLEL_DOT = 0.9995


# --- 1. the coarse in-between latent ------------------------------------------------------------------------------

def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    t = _per_sample(t, z0)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Spherical interpolation per sample over the flattened latent (N, ...):
    sin((1-t)θ)/sin θ · z0 + sin(tθ)/sin θ · z1 with cos θ = <z0, z1> / (|z0| |z1|); linear where |cos θ| > 0.9995."""
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    t = _per_sample(t, a).reshape(-1)
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    parallel = cos.abs() > PARALLEL_DOT
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    w1 = torch.where(parallel, t, torch.sin(t * theta) / safe_sin)
    return (w0[:, None] * a + w1[:, None] * b).reshape(z0.shape).to(z0.dtype)


def in_between(z0: torch.Tensor, z1: torch.Tensor, *, mode: str, flow_net=None, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """The coarse latent between z0 and z1 (N, 4, h, w) at time t (0: z0, 1: z1)."""
    check_mode(mode, flow_net)
    if mode == "linear":
        return lerp(z0, z1, t)
    if mode == "slerp":
        return slerp(z0, z1, t)
    return flow_net(z0.to(flow_net.dtype), z1.to(flow_net.dtype), t).frame.to(z0.dtype)


# --- 2. refinement by the diffusion network ----------------------------------------------------------------------

@torch.no_grad()
def refine(coarse: torch.Tensor, refiner, scheduler, *, steps: int, generator: torch.Generator | None,
           strength: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """Denoise with `refiner`(concat(x_t, coarse), t) under a diffusers scheduler (DDIM): from pure noise
    (strength 1) or, as image-to-image, from the coarse latent noised to the `strength` x steps-th last timestep.

    Noise is drawn once for all N latents from `generator` (CPU), so the result does not depend on `chunk`, the most
    latents per refiner call (memory)."""
    if not 0 < float(strength) <= 1:
        raise UserInputError(f"method.tsr.strength must be in (0, 1], got {strength}")
    if int(steps) < 1:
        raise UserInputError(f"method.tsr.steps must be at least 1, got {steps}")
    device, dtype = coarse.device, getattr(refiner, "dtype", coarse.dtype)
    scheduler.set_timesteps(int(steps), device=device)
    timesteps = scheduler.timesteps
    noise = torch.randn(coarse.shape, generator=generator, dtype=torch.float32).to(device)
    if strength < 1:  # the img2img start of diffusers' pipelines: skip the first (1 - strength) of the steps
        timesteps = timesteps[int(steps) - max(1, int(round(int(steps) * float(strength)))):]
        start = scheduler.add_noise(coarse.float(), noise, timesteps[:1].repeat(coarse.shape[0]))
    else:
        start = noise * scheduler.init_noise_sigma
    refined = []
    for begin in range(0, coarse.shape[0], chunk or coarse.shape[0]):
        latents = start[begin : begin + (chunk or coarse.shape[0])]
        condition = coarse[begin : begin + latents.shape[0]].float()
        for timestep in timesteps:
            model_input = torch.cat([scheduler.scale_model_input(latents, timestep), condition], dim=1)
            prediction = refiner(model_input.to(dtype), timestep).sample.float()
            latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
        refined.append(latents)
    return torch.cat(refined).to(coarse.dtype)


# --- 3. low frequencies of the coarse latent, high of the refined one ---------------------------------------------

def low_pass_mask(height: int, width: int, cutoff: float, device=None) -> torch.Tensor:
    """Which frequencies of an rfft2 spectrum (height, width // 2 + 1) are "low" at `cutoff`.

    Frequency (f_y, f_x) in cycles per latent pixel (numpy's fftfreq, |f| <= 1/2 per axis) has relative radius
    ρ = |f| / |(1/2, 1/2)|, in [0, 1] (1 at the corner where both axes are at Nyquist). Low: cutoff > 0 and ρ <= cutoff.
    So cutoff 0 keeps nothing, any cutoff > 0 keeps the mean (ρ = 0), cutoff 1 keeps every frequency.
    """
    fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(width, device=device, dtype=torch.float64)
    rho = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / math.sqrt(0.5)
    return (rho <= cutoff) if cutoff > 0 else torch.zeros_like(rho, dtype=torch.bool)


def combine_frequencies(warped: torch.Tensor, refined: torch.Tensor, cutoff: float) -> torch.Tensor:
    """low_pass(warped) + high_pass(refined) over the last two (spatial) axes, with the ideal FFT low-pass of
    `low_pass_mask` (0 = all refined, 1 = all warped), written as refined + low_pass(warped - refined), which is
    exact where the two agree.

    Why an FFT and not ILVR's downsample-upsample filter: its cutoff is one number that means the same at any latent
    size, not a resize factor that has to divide it."""
    if not 0 <= float(cutoff) <= 1:
        raise UserInputError(f"method.tsr.cutoff must be in [0, 1] (0: all refined, 1: all warped), got {cutoff}")
    height, width = warped.shape[-2:]
    mask = low_pass_mask(height, width, float(cutoff), warped.device)
    difference = (warped - refined).double()
    low = torch.fft.irfft2(torch.fft.rfft2(difference) * mask, s=(height, width))
    return (refined.double() + low).to(refined.dtype)


# --- the whole module: log2(factor) x2 steps ----------------------------------------------------------------------

@torch.no_grad()
def temporal_super_resolve(latents: torch.Tensor, *, factor: int, mode: str, flow_net=None, refiner=None, scheduler=None,
                           steps: int = 25, cutoff: float = 0.25, generator: torch.Generator | None = None,
                           t: float = 0.5, strength: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """(B, C, F, h, w) latents -> (B, C, (F - 1) x factor + 1, h, w), the input frames at every factor-th position.

    refiner None: the coarse in-between latents are used as they are (any mode). `t` places each new latent between
    its neighbours (1/2: evenly spaced, what a uniform frame rate needs). `chunk`: most pairs per refiner call.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor not in FACTORS:
        raise UserInputError(f"method.tsr.factor must be one of {', '.join(map(str, FACTORS))} (the x2 step applied "
                             f"log2(factor) times), got {factor!r}")
    check_mode(mode, flow_net)
    if refiner is not None and scheduler is None:
        raise UserInputError("method.tsr: a refiner needs its scheduler (load both with load_tsr_refiner)")
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, h, w), got {tuple(latents.shape)}")
    for _ in range(int(math.log2(factor))):
        batch, channels, frames, height, width = latents.shape
        if frames < 2:
            break
        pairs = latents.permute(0, 2, 1, 3, 4)  # (B, F, C, h, w)
        z0 = pairs[:, :-1].reshape(-1, channels, height, width)
        z1 = pairs[:, 1:].reshape(-1, channels, height, width)
        middle = in_between(z0, z1, mode=mode, flow_net=flow_net, t=t)
        if refiner is not None:
            refined = refine(middle, refiner, scheduler, steps=steps, generator=generator, strength=strength, chunk=chunk)
            middle = combine_frequencies(middle, refined, cutoff)
        middle = middle.reshape(batch, frames - 1, channels, height, width).permute(0, 2, 1, 3, 4)
        upsampled = latents.new_empty(batch, channels, 2 * frames - 1, height, width)
        upsampled[:, :, 0::2] = latents
        upsampled[:, :, 1::2] = middle.to(latents.dtype)
        latents = upsampled
    return latents


def check_mode(mode: str, flow_net) -> None:
    if mode not in MODES:
        raise UserInputError(f"method.tsr.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "flow" and flow_net is None:
        raise UserInputError("method.tsr.mode=flow needs a trained LatentFlowNet (stylevid train latent_flow); "
                             "or use method.tsr.mode=linear or slerp")


def _per_sample(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t as a scalar or one value per sample, shaped to broadcast over `like` (N, ...)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t
