"""Text2Video-Zero: zero-shot video from a text-to-image diffusion model (StyleT2V0 paper, Section 3.2).

Read top to bottom against the paper:
1. sample x_1^T for frame 1 and run Δt DDIM steps on it alone, to x_1^{T'} (here: to step t0, passing t1);
2. motion dynamics: warp x_1^{T'} by a global translation W_k for every frame k (`sampling.motion`);
3. DDPM forward from T' back up to the noise level t1, which lets objects move freely;
4. denoise all frames from t1 to 0 with cross-frame attention (keys and values of frame 1);
5. optional background smoothing (eq. 6) in that last loop.
Long videos run step 4 chunk by chunk, each chunk led by frame 1 as the shared anchor, so memory does not
grow with the number of frames.

With structure conditions (pose, edge or depth maps through ControlNet), Text2Video-Zero's conditional mode
replaces steps 1-3: every frame starts from the same noise latent and is denoised over the whole schedule,
the maps giving the motion; the motion-field procedure stays available behind `Control.motion_field`.
Cross-frame attention is installed in the ControlNet as well. StyleT2V0 (`methods/stylet2v0.py`) runs this same procedure with one extra
batch row, the style image, and another attention processor.

The step counts t0 < t1 are Text2Video-Zero's: they count DDIM steps from the end of the schedule, so with
50 steps and t0=44, t1=47 frame 1 alone gets 2 + 3 steps before the motion is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from omegaconf import DictConfig

from .. import values
from ..attention import CrossFrameAttnProcessor, installed_processors
from ..conditions.control import Control, build_control
from ..errors import UserInputError
from ..progress import StageReporter
from ..sampling.guidance import classifier_free
from ..sampling.motion import warp_latents
from ..sampling.vae import decode_to_uint8
from .base import VideoMethod, VideoOutput, VideoSettings, common_settings, load_image_pipeline, place, register


@dataclass
class ZeroShotSettings(VideoSettings):
    t0: int = 44
    t1: int = 47
    motion_field_strength_x: float = 12.0
    motion_field_strength_y: float = 12.0
    # Frames per UNet batch in the last loop, frame 1 (the anchor) included; 0 puts all frames in one batch.
    chunk_size: int = 8
    smooth_background: bool = False
    smoothing_alpha: float = 0.4
    smoothing_threshold: float = 1.0
    # The source of eq. 6's foreground mask M_k, pluggable (e.g. a salient-object detector, as Text2Video-Zero
    # uses): called as foreground_mask(predicted_x0, frame_ids) with a chunk's predicted clean latents
    # (rows, C, h, w), row 0 being frame 1; returns (rows - 1, 1 or C, h, w) in [0, 1] for frames frame_ids[1:],
    # 1 = foreground (left as is). None: motion saliency, `ZeroShotVideo.motion_saliency_mask`.
    foreground_mask: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None
    # Frames decoded at once by the VAE (VAE slicing); 0 decodes each chunk at once.
    frames_per_decode: int = 0

    def validate(self) -> None:
        if self.frames < 1:
            raise UserInputError(f"frames must be at least 1, got {self.frames}")
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise UserInputError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")
        if not 0 <= self.t0 < self.t1:
            raise UserInputError(f"need 0 <= t0 < t1, got t0={self.t0}, t1={self.t1}")
        if self.steps <= self.t1:
            raise UserInputError(
                f"steps={self.steps} is too small for t1={self.t1}: need steps > t1 "
                f"(e.g. steps=50 with t0=44 t1=47, or steps=20 with t0=14 t1=17)"
            )
        if self.frames > self.chunk_size > 0 and self.chunk_size < 2:
            raise UserInputError(f"chunk_size must be 0 (no chunking) or at least 2, got {self.chunk_size}")


@dataclass
class ExtraRows:
    """Rows that lead the batch of every UNet call, shared by the guidance groups; their predictions are
    discarded. StyleT2V0 uses one: the style image's DDIM-inverted latent at the current timestep.
    """

    latents_at: Callable[[int], torch.Tensor]  # timestep -> (rows, C, h, w)
    embeds: torch.Tensor  # (rows, tokens, dim)


def frame_chunks(frames: int, chunk_size: int) -> list[list[int]]:
    """Frame indices per UNet batch; every chunk after the first is led by frame 0, the anchor."""
    if chunk_size <= 0 or frames <= chunk_size:
        return [list(range(frames))]
    chunks = [list(range(chunk_size))]
    for start in range(chunk_size, frames, chunk_size - 1):
        chunks.append([0, *range(start, min(start + chunk_size - 1, frames))])
    return chunks


class ZeroShotVideo:
    """Runs Text2Video-Zero on the components of a Stable Diffusion pipeline (`pipe`)."""

    def __init__(self, pipe, reporter: StageReporter | None = None):
        self.pipe = pipe
        self.reporter = reporter or StageReporter()

    @torch.no_grad()
    def __call__(
        self,
        s: ZeroShotSettings,
        extra_rows: ExtraRows | None = None,
        processor_for: Callable[[str, int], object] | None = None,
        control: Control | None = None,
    ) -> VideoOutput:
        s.validate()
        pipe = self.pipe
        device = pipe._execution_device
        use_guidance = s.guidance_scale > 1.0
        groups = 2 if use_guidance else 1
        if processor_for is None:
            processor_for = lambda name, groups: CrossFrameAttnProcessor(groups)  # noqa: E731
        generator = torch.Generator("cpu").manual_seed(s.seed)  # CPU noise: same result on every device

        cond, uncond = pipe.encode_prompt(s.prompt, device, 1, use_guidance, s.negative_prompt or None)
        self._embeds = (cond, uncond)
        self._extra = extra_rows
        self._use_guidance = use_guidance
        self._settings = s
        self._control = control

        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(s.steps, device=device)
        timesteps = scheduler.timesteps
        self._scheduler = scheduler

        self._timesteps = timesteps
        latent_shape = (1, pipe.unet.config.in_channels, s.height // pipe.vae_scale_factor, s.width // pipe.vae_scale_factor)
        with ExitStack() as installed:
            for model in [pipe.unet, *(control.nets() if control else [])]:
                installed.enter_context(installed_processors(model, lambda name: processor_for(name, groups)))

            if control is not None and not control.motion_field:
                # Conditional mode: the maps carry the motion; all frames start from one x_T (or their own).
                shape = latent_shape if control.shared_noise else (s.frames, *latent_shape[1:])
                x_T = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype)
                start_latents = (x_T * scheduler.init_noise_sigma).expand(s.frames, -1, -1, -1).contiguous()
                last_loop = timesteps
            else:
                start_latents = self.motion_dynamics(latent_shape, generator, device, cond.dtype)
                last_loop = timesteps[-s.t1 - 1 :]

            # 4. All frames with cross-frame attention, chunk by chunk around the anchor.
            final_latents = torch.empty_like(start_latents)
            frames = np.empty((s.frames, s.height, s.width, 3), dtype=np.uint8)
            chunks = frame_chunks(s.frames, s.chunk_size)
            with self.reporter.stage("all frames", total=len(chunks) * len(last_loop)):
                for index, ids in enumerate(chunks):
                    denoised = self.denoise(start_latents[ids], last_loop, frame_ids=ids)
                    fresh = slice(None) if index == 0 else slice(1, None)  # later chunks repeat the anchor
                    final_latents[ids[fresh]] = denoised[fresh]

        with self.reporter.stage("decoding", total=len(chunks)):
            for index, ids in enumerate(chunks):
                fresh_ids = ids if index == 0 else ids[1:]
                frames[fresh_ids] = decode_to_uint8(pipe.vae, final_latents[fresh_ids], s.frames_per_decode or None, device)
                self.reporter.advance()
        return VideoOutput(frames=frames, latents=final_latents, timings=dict(self.reporter.timings))

    def motion_dynamics(self, latent_shape, generator, device, dtype) -> torch.Tensor:
        """Steps 1-3: frame 1 alone to t0, warped to every frame, noised back to t1; returns latents at t1."""
        s, scheduler, timesteps = self._settings, self._scheduler, self._timesteps
        # 1. x_1^T, then Δt DDIM steps on frame 1 alone: T -> t1 -> t0.
        x1_T = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
        with self.reporter.stage("first frame", total=s.steps - s.t0 - 1):
            x1_t1 = self.denoise(x1_T, timesteps[: -s.t1 - 1], frame_ids=[0])
            x1_t0 = self.denoise(x1_t1, timesteps[-s.t1 - 1 : -s.t0 - 1], frame_ids=[0])
        if s.frames == 1:
            return x1_t1
        # 2. Motion dynamics: W_k(x_1^{t0}) for frames 2..F.
        others = warp_latents(
            x1_t0.repeat(s.frames - 1, 1, 1, 1),
            frame_ids=range(1, s.frames),
            strength_x=s.motion_field_strength_x,
            strength_y=s.motion_field_strength_y,
        )
        # 3. DDPM forward from t0 to t1 (Text2Video-Zero's jump: the product of alphas over [t0, t1)).
        noise = randn_tensor(others.shape, generator=generator, device=device, dtype=others.dtype)
        t0_value, t1_value = int(timesteps[-s.t0 - 1]), int(timesteps[-s.t1 - 1])
        alpha = torch.prod(scheduler.alphas[t0_value:t1_value]).to(device)
        others = alpha.sqrt() * others + (1 - alpha).sqrt() * noise
        return torch.cat([x1_t1, others])

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, frame_ids: list[int]) -> torch.Tensor:
        """DDIM from timesteps[0] through timesteps[-1] for the frames `frame_ids` (row 0 is frame 1 if present)."""
        s, scheduler, cond, uncond = self._settings, self._scheduler, *self._embeds
        rows = latents.shape[0]
        embeds = cond.expand(rows, -1, -1)
        if self._use_guidance:
            embeds = torch.cat([uncond.expand(rows, -1, -1), embeds])
        extra_rows = 0
        if self._extra is not None:
            extra_rows = self._extra.embeds.shape[0]
            embeds = torch.cat([self._extra.embeds, embeds])
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if self._use_guidance else latents
            if self._extra is not None:
                model_input = torch.cat([self._extra.latents_at(int(t)).to(latents.dtype), model_input])
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.predict_noise(model_input, t, embeds, frame_ids, extra_rows)[extra_rows:]  # drop extra rows
            if self._use_guidance:
                noise = classifier_free(noise, s.guidance_scale)
            step = scheduler.step(noise, t, latents)
            latents = step.prev_sample
            if s.smooth_background and rows > 1 and frame_ids[0] == 0:
                latents = self.smooth_background(latents, step.pred_original_sample, frame_ids)
            self.reporter.advance()
        return latents

    def predict_noise(self, model_input, t, embeds, frame_ids: list[int], extra_rows: int) -> torch.Tensor:
        control = self._control
        residuals = {}
        step = int((self._timesteps == t).nonzero()[0, 0]) if control is not None else 0
        if control is not None and control.active_at(step, len(self._timesteps)):
            groups = 2 if self._use_guidance else 1
            images = [image[frame_ids].to(model_input.device, model_input.dtype).repeat(groups, 1, 1, 1) for image in control.images]
            if extra_rows:  # extra rows (the style image) get a blank map, and their residuals are zeroed below
                images = [torch.cat([image.new_zeros(extra_rows, *image.shape[1:]), image]) for image in images]
            down, mid = control.controlnet(
                model_input, t, encoder_hidden_states=embeds,
                controlnet_cond=images if len(images) > 1 else images[0],
                conditioning_scale=control.scales if len(images) > 1 else control.scales[0],
                return_dict=False,
            )
            if extra_rows:
                down = [torch.cat([r[:extra_rows] * 0, r[extra_rows:]]) for r in down]
                mid = torch.cat([mid[:extra_rows] * 0, mid[extra_rows:]])
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.pipe.unet(model_input, t, encoder_hidden_states=embeds, **residuals).sample

    def smooth_background(self, latents: torch.Tensor, predicted_x0: torch.Tensor, frame_ids: list[int]) -> torch.Tensor:
        """Eq. 6: x_k = M_k x_k + (1 - M_k)(α x̂_k + (1 - α) x_k), x̂_k being frame 1's latent warped to frame k.

        M_k comes from `settings.foreground_mask`, by default `motion_saliency_mask`.
        """
        s = self._settings
        ids = frame_ids[1:]
        mask_source = s.foreground_mask or self.motion_saliency_mask
        mask = mask_source(predicted_x0, frame_ids).to(latents.dtype)
        warped_anchor = warp_latents(latents[:1].repeat(len(ids), 1, 1, 1), ids, s.motion_field_strength_x, s.motion_field_strength_y)
        others = latents[1:]
        others = mask * others + (1 - mask) * (s.smoothing_alpha * warped_anchor + (1 - s.smoothing_alpha) * others)
        return torch.cat([latents[:1], others])

    def motion_saliency_mask(self, predicted_x0: torch.Tensor, frame_ids: list[int]) -> torch.Tensor:
        """The default foreground mask: motion saliency in the predicted clean latents.

        Where frame k differs from frame 1 warped to it by more than `smoothing_threshold` standard deviations,
        something moves on its own, so it is foreground. (Text2Video-Zero uses a salient-object detector here;
        this source needs no extra weights.)
        """
        s = self._settings
        ids = frame_ids[1:]
        anchor_x0 = warp_latents(predicted_x0[:1].repeat(len(ids), 1, 1, 1), ids, s.motion_field_strength_x, s.motion_field_strength_y)
        difference = (predicted_x0[1:] - anchor_x0).abs().mean(dim=1, keepdim=True)
        return (difference > s.smoothing_threshold * difference.std().clamp_min(1e-6)).float()


def default_step_counts(steps: int) -> tuple[int, int]:
    """Text2Video-Zero's t0=44, t1=47 at 50 steps, scaled to `steps`.

    At 50 steps frame 1 alone gets 2 DDIM steps to t1 and 3 more to t0; keep those fractions of the schedule
    (at least one step each) so that `steps=20` works without also setting t0 and t1.
    """
    to_t1 = max(1, round(2 * steps / 50))
    to_t0 = max(1, round(3 * steps / 50))
    t1 = steps - 1 - to_t1
    return t1 - to_t0, t1


def zero_shot_settings(cfg: DictConfig) -> ZeroShotSettings:
    """The settings `stylevid generate method=t2v_zero|stylet2v0` composes, checked."""
    method = cfg.method
    common = common_settings(cfg)
    t0, t1 = method.get("t0"), method.get("t1")
    if t0 is None or t1 is None:
        if common["steps"] < 3:
            raise UserInputError(
                f"steps must be at least 3 for method={method.name} (frame 1 is denoised alone for some steps before "
                f"the motion is applied, then all frames together), got {common['steps']}"
            )
        default_t0, default_t1 = default_step_counts(common["steps"])
        t0 = default_t0 if t0 is None else t0
        t1 = default_t1 if t1 is None else t1
    settings = ZeroShotSettings(
        **common,
        t0=values.integer(t0, "method.t0", 0),
        t1=values.integer(t1, "method.t1", 0),
        motion_field_strength_x=values.number(method.motion_field_strength_x, "method.motion_field_strength_x"),
        motion_field_strength_y=values.number(method.motion_field_strength_y, "method.motion_field_strength_y"),
        chunk_size=values.integer(cfg.chunk_size, "chunk_size", 0),
        smooth_background=bool(method.smooth_background),
        smoothing_alpha=values.number(method.smoothing_alpha, "method.smoothing_alpha", 0, 1),
        smoothing_threshold=values.number(method.smoothing_threshold, "method.smoothing_threshold", 0),
        frames_per_decode=1 if cfg.get("vae_slicing") else 0,
    )
    settings.validate()
    return settings


@dataclass
class ZeroShotModels:
    """What every video of a zero-shot run shares: the image pipeline and the ControlNet guidance, if any."""

    pipe: object
    control: Control | None


def load_zero_shot(cfg: DictConfig, settings: ZeroShotSettings, device, dtype, conditions) -> ZeroShotModels:
    pipe = place(load_image_pipeline(cfg, settings, dtype), cfg, device)
    control = build_control(cfg, conditions, pipe.unet, dtype, device, pipe.vae_scale_factor) if conditions else None
    return ZeroShotModels(pipe=pipe, control=control)


@register
class TextToVideoZero(VideoMethod):
    name = "t2v_zero"
    description = "Text2Video-Zero: zero-shot video from a text-to-image model (motion field, cross-frame attention)"
    supports = frozenset({"condition", "condition_motion_field", "condition_noise_per_frame", "cpu_offload", "vae_slicing"})
    example = 'prompt="a panda surfing" frames=24 chunk_size=8'

    def settings(self, cfg: DictConfig) -> ZeroShotSettings:
        return zero_shot_settings(cfg)

    def load(self, cfg, settings, device, dtype, conditions) -> ZeroShotModels:
        return load_zero_shot(cfg, settings, device, dtype, conditions)

    def generate(self, loaded: ZeroShotModels, settings: ZeroShotSettings, reporter: StageReporter) -> VideoOutput:
        return ZeroShotVideo(loaded.pipe, reporter)(settings, control=loaded.control)

    def record(self, cfg, settings: ZeroShotSettings) -> dict:
        return {"t0": settings.t0, "t1": settings.t1}
