"""AnimateDiff (paper Sections 3.3-4): a trained motion module plugged into any personalized SD 1.x model.

1. The personalized image model (`model.path`: hub id, diffusers directory or single-file checkpoint such as
   a civitai .safetensors) is loaded by `stylevid.models.loading.load_pipeline`; an optional image LoRA
   (`lora.path`, kohya or diffusers format) is fused into its UNet and text encoder with `lora.scale`.
2. The motion module (`motion.path`: a diffusers `MotionAdapter` hub id or directory, an original
   AnimateDiff v1/v2/v3 file, or one trained by `stylevid train motion_module`) and an optional motion
   LoRA are loaded; `UNetMotionModel.from_unet2d` inflates the image UNet with it (Section 3.3.1: frames
   in the batch axis for image layers, temporal transformers across frames at every level).
3. Sampling is diffusers' `AnimateDiffPipeline` on those components, with a CPU generator for the initial
   noise, DDIM on the linear beta schedule the module was trained with (Section 4.1.1, Schedule B).
   Long videos: FreeNoise sliding context windows (`method.free_noise`), optional FreeInit
   (`method.free_init`). The pipeline's own denoising loop is used so that these options stay exactly
   diffusers' implementations; stylevid adds the loading, the progress and the run record.
4. Latents are decoded frame by frame (in chunks) to uint8 frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel

from ..errors import UserInputError
from ..models.lora import fuse_lora
from ..models.motion_module import check_fits, inflate, load_motion_adapter, tiny_motion_adapter
from ..progress import StageReporter
from ..sampling.vae import decode_to_uint8
from .. import values
from .common import common_settings
from .t2v_zero import VideoOutput

log = logging.getLogger(__name__)
BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclass
class AnimateDiffSettings:
    prompt: str
    negative_prompt: str = ""
    frames: int = 16
    height: int = 512
    width: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    # DDIM's beta schedule for sampling: "linear" 0.00085-0.012 as the motion module was trained (Schedule B);
    # None keeps the personalized model's own scheduler config.
    beta_schedule: str | None = "linear"
    free_noise: bool = False
    context_length: int = 16
    context_stride: int = 4
    free_init: bool = False
    free_init_iters: int = 3
    frames_per_decode: int = 16

    def validate(self, max_seq_length: int | None = None) -> None:
        if self.frames < 1 or self.steps < 1:
            raise UserInputError(f"frames and steps must be >= 1, got frames={self.frames} steps={self.steps}")
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise UserInputError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")
        if self.beta_schedule is not None and self.beta_schedule not in BETA_SCHEDULES:
            raise UserInputError(f"method.beta_schedule must be one of {', '.join(BETA_SCHEDULES)} or null")
        window = self.context_length if self.free_noise else self.frames
        if max_seq_length is not None and window > max_seq_length:
            hint = "lower method.context_length" if self.free_noise else "turn on method.free_noise=true for long videos"
            raise UserInputError(
                f"the motion module sees at most {max_seq_length} frames at once, asked for {window}; {hint}"
            )
        if self.free_noise and not 0 < self.context_stride <= self.context_length:
            raise UserInputError("method.context_stride must be in 1..context_length")


def settings_from_config(cfg) -> AnimateDiffSettings:
    method = cfg.method
    return AnimateDiffSettings(
        **common_settings(cfg),
        beta_schedule=method.get("beta_schedule"),
        free_noise=bool(method.get("free_noise", False)),
        context_length=values.integer(method.get("context_length", 16), "method.context_length", 1),
        context_stride=values.integer(method.get("context_stride", 4), "method.context_stride", 1),
        free_init=bool(method.get("free_init", False)),
        free_init_iters=values.integer(method.get("free_init_iters", 3), "method.free_init_iters", 1),
        frames_per_decode=1 if cfg.get("vae_slicing") else values.integer(
            method.get("frames_per_decode", 16), "method.frames_per_decode", 1),
    )


def load_motion(cfg, dtype: torch.dtype = torch.float32, unet=None) -> MotionAdapter:
    """The motion module `motion.path` names (the packaged one for model=toy or motion.path=toy, a random tiny one
    for model=tiny), with its motion LoRA fused.

    With `unet` (the image UNet it will inflate), a module made for another base model is refused here, on
    one line, before any run directory exists.
    """
    motion = cfg.motion
    path = motion.get("path")
    if path == "toy" or (not path and cfg.model.get("name") == "toy"):
        from ..toy import toy_path

        path = toy_path("motion_module")  # the toy world's module, trained with `stylevid train motion_module`
    if path:
        adapter = load_motion_adapter(
            str(path),
            dtype,
            allow_pickle=bool(motion.get("allow_pickle", False)),
            num_attention_heads=int(motion.get("num_attention_heads", 8)),
        )
    elif cfg.model.get("name") == "tiny":
        adapter = tiny_motion_adapter(seed=int(cfg.model.get("seed", 0))).to(dtype)
    else:
        raise UserInputError(
            "method=animatediff needs a motion module: pass motion.path=<hub id, MotionAdapter directory, or .safetensors>"
        )
    if unet is not None:
        check_fits(unet, adapter)
    if motion.get("lora_path"):
        fuse_lora({"unet": adapter}, str(motion.lora_path), float(motion.get("lora_scale", 1.0)))
    return adapter


def apply_image_lora(pipe, cfg) -> None:
    """Fuse `lora.path` (a personalized style LoRA) into the image UNet and text encoder with `lora.scale`."""
    lora = cfg.get("lora")
    if lora and lora.get("path"):
        fuse_lora({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, str(lora.path), float(lora.get("scale", 1.0)))


def animatediff_pipeline(
    pipe, motion_adapter: MotionAdapter | None, beta_schedule: str | None = "linear", video_unet: UNetMotionModel | None = None
) -> AnimateDiffPipeline:
    """diffusers' AnimateDiffPipeline on `pipe`'s components; its UNet is the image UNet inflated with the module,
    or `video_unet` as is (an already inflated UNet, e.g. the trainer's own, on its device)."""
    scheduler = pipe.scheduler
    if beta_schedule is not None:
        # AnimateDiff's inference config: DDIM, linear betas 0.00085-0.012, no clipping, linspace steps.
        scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config,
            beta_schedule=beta_schedule,
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            timestep_spacing="linspace",
            steps_offset=1,
        )
    if video_unet is None:
        motion_adapter = motion_adapter.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
        # The same UNetMotionModel.from_unet2d the pipeline would call, but a module for another base model
        # becomes a one-line UserInputError instead of diffusers' size-mismatch RuntimeError.
        video_unet = inflate(pipe.unet, motion_adapter)
    else:
        motion_adapter = None  # already inside video_unet; registering it could move the pipeline's device
    return AnimateDiffPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=video_unet,  # a UNetMotionModel is used as is
        motion_adapter=motion_adapter,
        scheduler=scheduler,
    )


def generate(
    pipe,
    motion_adapter: MotionAdapter | None,
    settings: AnimateDiffSettings,
    reporter: StageReporter | None = None,
    video_unet: UNetMotionModel | None = None,
) -> VideoOutput:
    """One video: `pipe` is the (personalized, LoRA-fused) SD pipeline, `motion_adapter` the motion module.

    `video_unet`, when given, is an already inflated UNet used as is (and `motion_adapter` may be None): the
    trainer's validation samples with its own UNet on its device instead of inflating `pipe.unet` again.
    """
    reporter = reporter or StageReporter()
    config = video_unet.config if video_unet is not None else motion_adapter.config
    settings.validate(int(config.motion_max_seq_length))
    with reporter.stage("inflating"):
        video_pipe = animatediff_pipeline(pipe, motion_adapter, settings.beta_schedule, video_unet)
        video_pipe.set_progress_bar_config(disable=True)
        if settings.free_noise:
            video_pipe.enable_free_noise(context_length=settings.context_length, context_stride=settings.context_stride)
        if settings.free_init:
            video_pipe.enable_free_init(num_iters=settings.free_init_iters, use_fast_sampling=False)

    iterations = settings.free_init_iters if settings.free_init else 1

    def advance(pipeline, step, timestep, callback_kwargs):
        reporter.advance()
        return callback_kwargs

    # Noise from a CPU generator: the same video on any device (diffusers draws on the generator's device).
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with reporter.stage("denoising", total=settings.steps * iterations):
        latents = video_pipe(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            num_frames=settings.frames,
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            output_type="latent",
            callback_on_step_end=advance,
        ).frames  # (1, C, F, h, w)
    latents = latents[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    with reporter.stage("decoding"):
        frames = decode_to_uint8(pipe.vae, latents, settings.frames_per_decode or None)
    return VideoOutput(frames=frames, latents=latents.cpu(), timings=dict(reporter.timings))
