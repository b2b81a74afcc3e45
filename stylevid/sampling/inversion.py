"""DDIM inversion: run the deterministic DDIM update backwards to get the latent of an image at every step.

Used for the style image of StyleT2V0 (its latent at each denoising timestep is the extra batch row whose
queries and keys are Q_r, K_r) and by `stylevid invert`. The update is diffusers' `DDIMInverseScheduler`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from .guidance import classifier_free


@torch.no_grad()
def ddim_invert(
    unet,
    scheduler: DDIMScheduler,
    clean_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    num_steps: int,
    negative_embeds: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    on_step: Callable[[int], None] | None = None,
) -> dict[int, torch.Tensor]:
    """Return {timestep: latents at that timestep} for the timesteps DDIM visits with `num_steps` steps.

    Step i of the inverse scheduler takes the latent at the previous timestep to timestep t_i, with the noise
    predicted at t_i (the usual approximation of DDIM inversion). Guidance 1 (the default) inverts with the
    prompt alone, which reconstructs best; `negative_embeds` is needed only for guidance > 1.
    """
    config = dict(scheduler.config)
    if config.get("timestep_spacing") not in ("leading", "trailing"):
        # DDIMInverseScheduler has no "linspace" spacing (AnimateDiff's sampling schedule): invert on the trailing
        # grid, which like linspace reaches the last training timestep, so the first (noisiest) sampling step finds
        # a fully inverted latent; `latents_at_timestep` gives every other step the nearest inverted level.
        config["timestep_spacing"] = "trailing"
    inverse = DDIMInverseScheduler.from_config(config)
    inverse.set_timesteps(num_steps, device=clean_latents.device)
    use_guidance = guidance_scale > 1.0 and negative_embeds is not None
    rows = clean_latents.shape[0]  # one image, or the frames of a video inverted together
    embeds = prompt_embeds.expand(rows, -1, -1)
    if use_guidance:
        embeds = torch.cat([negative_embeds.expand(rows, -1, -1), embeds])
    latents = clean_latents
    trajectory: dict[int, torch.Tensor] = {}
    for i, t in enumerate(inverse.timesteps):
        model_input = torch.cat([latents] * 2) if use_guidance else latents
        noise = unet(model_input, t, encoder_hidden_states=embeds).sample
        if use_guidance:
            noise = classifier_free(noise, guidance_scale)
        latents = inverse.step(noise, t, latents).prev_sample
        trajectory[int(t)] = latents
        if on_step is not None:
            on_step(i)
    return trajectory


def latents_at_timestep(trajectory: dict[int, torch.Tensor], clean: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """A lookup `timestep -> latent` into an inversion trajectory, for a reference image denoised alongside a video.

    An empty trajectory means the clean latent at every step (a "clean" reference). A timestep the inversion did
    not visit (a sampling schedule other than the inverse scheduler's) gets the nearest inverted level.
    """
    known = torch.tensor(sorted(trajectory))

    def latents_at(timestep: int) -> torch.Tensor:
        if not trajectory:
            return clean
        if timestep in trajectory:
            return trajectory[timestep]
        return trajectory[int(known[(known - timestep).abs().argmin()])]

    return latents_at
