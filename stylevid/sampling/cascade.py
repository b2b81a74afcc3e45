"""One stage of VideoGen's reference-guided cascaded latent video diffusion (paper Section 3.2), sampled.

The base stage denoises a latent video from noise given the text, the reference image's latent on frame 0 and the
FPS; a super-resolution stage also takes the x2-upsampled, noise-augmented output of the stage below. Classifier-
free guidance is on the text only (`sampling.guidance.classifier_free`): the reference and low-resolution
conditions are the same in the unconditional and the conditional pass, so guidance steers towards the caption
without pushing away from the reference. `reference_mode="none"` passes zeros for the reference (what training's
reference dropout showed the model), a real ablation on the same weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserInputError
from ..models.inflate import VideoUNet
from ..models.videogen import LATENT_CHANNELS, reference_condition, stage_kind, upsample_condition
from .guidance import classifier_free

REFERENCE_MODES = ("first_frame", "none")


@torch.no_grad()
def sample_stage(
    unet: VideoUNet,
    scheduler,
    *,
    text_embeddings: torch.Tensor,
    negative_embeddings: torch.Tensor | None,
    reference_latent: torch.Tensor | None,
    low_resolution: torch.Tensor | None,
    fps: float,
    noise_level: int,
    frames: int,
    height_latent: int,
    width_latent: int,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    reference_mode: str = "first_frame",
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Scaled latents (B, 4, F, h, w) (the VAE's scaling_factor applied) of one stage's denoising loop.

    text_embeddings / negative_embeddings: (B, L, D); guidance (scale > 1) needs the negative (e.g. the empty
    prompt's). reference_latent: (B, 4, h, w) at this stage's resolution, or None (zeros). low_resolution:
    (B, 4, F, h/2, w/2), the stage below's latents: required by a super-resolution stage, refused by the base;
    augmented at `noise_level` (0: none) by `scheduler.add_noise`, so the scheduler must carry the betas the stage
    trained with (`conf/diffusion/`), as it must for denoising anyway. The initial noise is drawn first from `generator` (on the CPU when it is
    a CPU generator, as diffusers' pipelines do), then the low-resolution augmentation noise, then whatever a
    stochastic scheduler draws. callback(step_index, timestep, latents) after every step.
    """
    kind = stage_kind(unet)
    if reference_mode not in REFERENCE_MODES:
        raise UserInputError(f"reference_mode must be one of {', '.join(REFERENCE_MODES)}, got {reference_mode!r}")
    batch = text_embeddings.shape[0]
    device, dtype = unet.device, unet.dtype
    guided = guidance_scale > 1.0
    if guided and negative_embeddings is None:
        raise ValueError("guidance_scale > 1 needs negative_embeddings (e.g. the empty prompt's)")
    if kind == "sr" and low_resolution is None:
        raise UserInputError("a super-resolution stage needs the lower stage's latents (low_resolution)")
    if kind == "base" and low_resolution is not None:
        raise UserInputError("the base stage takes no low-resolution input")
    if reference_latent is not None and tuple(reference_latent.shape[2:]) != (height_latent, width_latent):
        raise UserInputError(f"the reference latent is {tuple(reference_latent.shape[2:])}, this stage samples "
                             f"{(height_latent, width_latent)}: encode the reference at the stage's resolution")

    # 1. initial noise, as TextToVideoSDPipeline.prepare_latents draws it
    shape = (batch, LATENT_CHANNELS, frames, height_latent, width_latent)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma

    # 2. the concatenated conditions: reference on frame 0 (Section 3.2), then the upsampled lower stage
    reference = reference_latent if reference_mode == "first_frame" else None
    conditions = [reference_condition(None if reference is None else reference.to(device, dtype), frames,
                                      shape=(batch, height_latent, width_latent)).to(device, dtype)]
    if kind == "sr":
        if tuple(low_resolution.shape) != (batch, LATENT_CHANNELS, frames, height_latent // 2, width_latent // 2):
            raise UserInputError(f"low_resolution must be {(batch, LATENT_CHANNELS, frames, height_latent // 2, width_latent // 2)}, "
                                 f"got {tuple(low_resolution.shape)}")
        levels = torch.full((batch,), int(noise_level), dtype=torch.long)
        conditions.append(upsample_condition(low_resolution.to(device, dtype), levels, scheduler, generator))
    extra = torch.cat(conditions, dim=1)
    scalars = {"fps": torch.full((batch,), float(fps), device=device)}
    if kind == "sr":
        scalars["noise_level"] = torch.full((batch,), float(noise_level), device=device)

    # 3. the unconditional and conditional rows in one batch, [uncond, cond] as diffusers stacks them
    if guided:
        embeddings = torch.cat([negative_embeddings, text_embeddings]).to(device, dtype)
        extra = torch.cat([extra, extra])
        scalars = {name: torch.cat([value, value]) for name, value in scalars.items()}
    else:
        embeddings = text_embeddings.to(device, dtype)

    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    scheduler.set_timesteps(steps, device=device)
    for index, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = unet(model_input, t, encoder_hidden_states=embeddings, extra_input=extra, **scalars).sample
        if guided:
            noise = classifier_free(noise, guidance_scale)
        # Stepped with frames in the batch axis, as TextToVideoSDPipeline does: the same update for deterministic
        # schedulers, and a stochastic one draws its noise in the same layout (the same numbers from one seed).
        frames_first = lambda x: x.permute(0, 2, 1, 3, 4).reshape(batch * frames, *x.shape[1:2], *x.shape[3:])  # noqa: E731
        stepped = scheduler.step(frames_first(noise), t, frames_first(latents), **step_kwargs).prev_sample
        latents = stepped.reshape(batch, frames, *stepped.shape[1:]).permute(0, 2, 1, 3, 4)
        if callback is not None:
            callback(index, t, latents)
    return latents
