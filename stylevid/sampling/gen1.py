"""Gen-1's sampler (paper 002, Section 3.3): DDIM with temporal guidance (eq. 8), in temporal windows, with masking.

Eq. 8 combines three predictions of the jointly trained model for the same z_t, t and structure s:

    μ̃ = μ^π(z_t, ∅, s) + ω_t (μ(z_t, ∅, s) − μ^π(z_t, ∅, s)) + ω (μ(z_t, c, s) − μ(z_t, ∅, s))

μ is the video model, μ^π the image model applied to each frame alone (the same weights with every temporal layer
bypassed: `VideoUNet(..., image_mode=True)`), c the content token and ∅ the unconditional one (a zero token, the
`StableDiffusionImageVariationPipeline` convention). The guidance is applied to the network's output (v here):
for a fixed z_t and t the DDIM mean is an affine function of that output, so the weights sum to one and combining
outputs combines means exactly. It is one call of `guidance.guide`. The video model's unconditional and
conditional rows go through the UNet in one batch (as every classifier-free sampler here); the image model's pass
is a separate call. At ω_t = 1 the image term cancels: the image pass is skipped and what remains is plain
classifier-free guidance (`guidance.classifier_free` on the same batch, bit for bit).

Long inputs: the latents of the whole clip are one tensor (one noise draw for all frames, so overlapping windows
share it); at every step the guided prediction is computed window by window (`method.window` frames,
`method.window_overlap` shared with the next) and the windows' predictions are blended linearly over the shared
frames, then one DDIM step moves the whole clip. Memory is that of one window plus the clip's latents; at
initialisation (identity temporal layers) every frame is independent, so windows give what one window gives.

Masked editing (Fig. 8): outside the edited region the latents are replaced after every step by the input's latents
noised to the next timestep, exactly as diffusers' `StableDiffusionInpaintPipeline` does for a 4-channel UNet
(`init_latents_proper = scheduler.add_noise(image_latents, noise, next timestep)`, `latents = (1 - mask) *
init_latents_proper + mask * latents`; the clean latents after the last step), with the same noise the
sampling started from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserInputError
from ..models.video_decoder import chunk_windows
from .guidance import guide


def video_prediction(unet, latents: torch.Tensor, t, content: torch.Tensor, structure: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """μ(z, ∅, s) and μ(z, c, s) of the video model, the two rows in one UNet call ([unconditional, conditional],
    the order diffusers' pipelines stack them in). latents (B, 4, F, h, w), content (B, 1, D), structure
    (B, 8, F, h, w) or None for a model without structure channels."""
    batch = torch.cat([latents, latents])
    context = torch.cat([torch.zeros_like(content), content])
    extra = None if structure is None else torch.cat([structure, structure])
    unconditional, conditional = unet(batch, t, encoder_hidden_states=context, extra_input=extra).sample.chunk(2)
    return unconditional, conditional


def image_prediction(unet, latents: torch.Tensor, t, content: torch.Tensor, structure: torch.Tensor | None
                     ) -> torch.Tensor:
    """μ^π(z, ∅, s): the image model, every frame on its own (frames in the batch, temporal layers bypassed)."""
    return unet(latents, t, encoder_hidden_states=torch.zeros_like(content), extra_input=structure,
                image_mode=True).sample


def guided_prediction(unet, latents: torch.Tensor, t, content: torch.Tensor, structure: torch.Tensor | None, *,
                      guidance_scale: float, temporal_guidance: float) -> torch.Tensor:
    """Eq. 8's guided prediction for latents (B, 4, F, h, w); (B, 4, F, h, w)."""
    if guidance_scale == 1 and temporal_guidance == 1:
        # Both differences have weight one and cancel down to the conditional video prediction: one row suffices
        # (what diffusers' pipelines do at guidance_scale 1).
        return unet(latents, t, encoder_hidden_states=content, extra_input=structure).sample
    unconditional, conditional = video_prediction(unet, latents, t, content, structure)
    if temporal_guidance == 1:
        # μ^π + 1·(μ − μ^π) = μ: the image model's term cancels, so its pass is not run.
        return guide(unconditional, [(guidance_scale, conditional, unconditional)])
    image = image_prediction(unet, latents, t, content, structure)
    return guide(image, [(temporal_guidance, unconditional, image), (guidance_scale, conditional, unconditional)])


def windows(frames: int, window: int | None, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) temporal windows covering `frames` (one window when `window` is None or not shorter)."""
    if window is None or window >= frames:
        return [(0, frames)]
    if window < 1 or not 0 <= overlap < window:
        raise UserInputError(f"window_overlap={overlap} must be in [0, window={window})")
    return chunk_windows(frames, window, overlap)


def windowed_prediction(predict: Callable[[slice], torch.Tensor], frames: int, spans: list[tuple[int, int]]
                        ) -> torch.Tensor:
    """`predict(slice)` for every window, blended over shared frames by a linear ramp from the earlier window's
    value to the later one's (the video decoder's chunk blend), so a frame both windows predict alike comes back
    exactly.

    Written here: diffusers' only temporal windowing for sampling (FreeNoise, `AnimateDiffPipeline.enable_free_noise`)
    lives inside the motion modules of `UNetMotionModel`, not around a `UNet3DConditionModel`'s forward."""
    output, done = None, 0
    for start, stop in spans:
        part = predict(slice(start, stop))
        if output is None:
            output = part.new_empty(*part.shape[:2], frames, *part.shape[3:])
        shared = done - start
        if shared > 0:
            ramp = torch.arange(1, shared + 1, device=part.device, dtype=part.dtype) / (shared + 1)
            output[:, :, start:done] = torch.lerp(output[:, :, start:done], part[:, :, :shared], ramp.view(1, 1, -1, 1, 1))
        output[:, :, max(done, start):stop] = part[:, :, max(shared, 0):]
        done = stop
    return output


def blend_known(latents: torch.Tensor, known: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, scheduler,
                next_timestep) -> torch.Tensor:
    """StableDiffusionInpaintPipeline's 4-channel blend after a step: the known latents noised to the next
    timestep (clean after the last step, `next_timestep=None`) outside the mask, the sampled ones inside.
    mask: 1 where the video is edited (broadcast over channels)."""
    proper = known
    if next_timestep is not None:
        proper = scheduler.add_noise(known, noise, torch.tensor([next_timestep]))
    return (1 - mask) * proper + mask * latents


@torch.no_grad()
def sample_gen1(
    unet,
    scheduler,
    *,
    content: torch.Tensor,
    structure: torch.Tensor | None,
    steps: int,
    guidance_scale: float,
    temporal_guidance: float,
    shape: tuple[int, ...] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    window: int | None = None,
    window_overlap: int = 0,
    known_latents: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDIM from noise to clean latents (B, 4, F, h, w) under eq. 8.

    content: (B, 1, D) content tokens; structure: (B, 8, F, h, w) (or None for a model without structure channels);
    noise: the initial noise (B, 4, F, h, w), else drawn from `generator` (on the CPU: results do not depend on the
    device) in `shape`; window / window_overlap: temporal windows (None: all frames at once);
    known_latents (B, 4, F, h, w) and mask (B or 1, 1, F, h, w), 1 = edit: masked editing.
    `callback(step_index, timestep, latents)` after each step.

    The loop is diffusers' DDIM pipeline loop (scale_model_input, prediction, `scheduler.step` with eta 0, the
    inpainting blend), written out because no pipeline takes a prediction built from two models (eq. 8).
    """
    device = next(unet.parameters()).device
    if noise is None:
        if shape is None:
            raise ValueError("sample_gen1 needs noise= or shape=")
        noise = randn_tensor(tuple(shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    noise = noise.to(device=device, dtype=unet.dtype)
    if (known_latents is None) != (mask is None):
        raise ValueError("masked editing needs both known_latents and mask")
    frames = noise.shape[2]
    spans = windows(frames, window, window_overlap)
    content = content.to(device=device, dtype=unet.dtype)
    if structure is not None:
        structure = structure.to(device=device, dtype=unet.dtype)
    if known_latents is not None:
        known_latents, mask = known_latents.to(device=device, dtype=unet.dtype), mask.to(device=device, dtype=unet.dtype)

    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)

        def predict(frames_slice: slice) -> torch.Tensor:
            return guided_prediction(unet, model_input[:, :, frames_slice], t, content,
                                     None if structure is None else structure[:, :, frames_slice],
                                     guidance_scale=guidance_scale, temporal_guidance=temporal_guidance)

        prediction = predict(slice(None)) if len(spans) == 1 else windowed_prediction(predict, frames, spans)
        latents = scheduler.step(prediction, t, latents, eta=0.0, generator=generator).prev_sample
        if known_latents is not None:
            following = timesteps[index + 1] if index < len(timesteps) - 1 else None
            latents = blend_known(latents, known_latents, noise, mask, scheduler, following)
        if callback is not None:
            callback(index, t, latents)
    return latents
