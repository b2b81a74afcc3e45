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

Features that compose with it, as with the zero-shot methods:
- ControlNet structure conditions (`condition=depth`, `condition=[pose,canny]`, `condition.video`/`maps`, per-kind
  scales, guidance start/end): sampling is then diffusers' `AnimateDiffControlNetPipeline` on the same components;
- a style image (`style=`, the `method.sharing` presets and keys of stylet2v0): its latent goes through the
  spatial self-attention layers in a reference pass of the same UNet with the temporal layers off, and every
  frame's self-attention shares its statistics (`stylevid.attention.reference`);
- `cpu_offload=true` (diffusers' model CPU offload on the video pipeline) and `vae_slicing=true`;
- per-frame prompts (`method.per_frame_prompts`: N written by the LLM with `prompt_refiner=llm`, or a list): each
  guides its anchor frame, the frames between get the linear mix of the two text embeddings (`prompt_inputs`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffControlNetPipeline, AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from .. import values
from ..conditions.control import Control, build_control
from ..conditions.style import StyleSettings, check_layers, check_style_image, load_style_image
from ..errors import UserInputError
from ..models.lora import fuse_lora
from ..models.motion_module import check_fits, inflate, load_motion_adapter, tiny_motion_adapter
from ..attention.reference import image_layers_only, sharing_in_layers, style_reference
from ..progress import StageReporter
from ..prompting.frames import anchor_frames, frame_prompts_setting, interpolate_frame_embeddings
from ..sampling.inversion import ddim_invert, latents_at_timestep
from ..sampling.vae import decode_to_uint8, encode_images
from .base import VideoMethod, VideoOutput, VideoSettings, common_settings, load_image_pipeline, place, register

log = logging.getLogger(__name__)
BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclass
class AnimateDiffSettings(VideoSettings):
    frames: int = 16
    steps: int = 25
    # DDIM's beta schedule for sampling: "linear" 0.00085-0.012 as the motion module was trained (Schedule B);
    # None keeps the personalized model's own scheduler config.
    beta_schedule: str | None = "linear"
    free_noise: bool = False
    context_length: int = 16
    context_stride: int = 4
    free_init: bool = False
    free_init_iters: int = 3
    frames_per_decode: int = 16
    style: StyleSettings | None = None  # style=: the style image and how attention shares it
    frame_prompts: list[str] | None = None  # method.per_frame_prompts: prompts for successive frames (None: `prompt`)

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
    style = None
    if cfg.get("style"):
        style = StyleSettings.from_config(cfg)
        style.validate()
    common = common_settings(cfg)
    settings = AnimateDiffSettings(
        **common,
        beta_schedule=method.get("beta_schedule"),
        free_noise=bool(method.get("free_noise", False)),
        context_length=values.integer(method.get("context_length", 16), "method.context_length", 1),
        context_stride=values.integer(method.get("context_stride", 4), "method.context_stride", 1),
        free_init=bool(method.get("free_init", False)),
        free_init_iters=values.integer(method.get("free_init_iters", 3), "method.free_init_iters", 1),
        frames_per_decode=1 if cfg.get("vae_slicing") else values.integer(
            method.get("frames_per_decode", 16), "method.frames_per_decode", 1),
        style=style,
        frame_prompts=frame_prompts_setting(cfg, common["frames"]),
    )
    settings.validate()
    if style is not None:
        check_style_image(style.image, settings.height, settings.width)
    return settings


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


def sampling_scheduler(pipe, beta_schedule: str | None = "linear") -> DDIMScheduler:
    """AnimateDiff's inference scheduler: DDIM, linear betas 0.00085-0.012, no clipping, linspace steps (the
    module's training schedule); beta_schedule=None keeps the personalized model's own scheduler."""
    if beta_schedule is None:
        return pipe.scheduler
    return DDIMScheduler.from_config(
        pipe.scheduler.config,
        beta_schedule=beta_schedule,
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=1,
    )


def animatediff_pipeline(
    pipe,
    motion_adapter: MotionAdapter | None,
    beta_schedule: str | None = "linear",
    video_unet: UNetMotionModel | None = None,
    controlnet: torch.nn.Module | None = None,
) -> AnimateDiffPipeline | AnimateDiffControlNetPipeline:
    """diffusers' AnimateDiffPipeline on `pipe`'s components (AnimateDiffControlNetPipeline with `controlnet`, a
    ControlNetModel or MultiControlNetModel); its UNet is the image UNet inflated with the module, or
    `video_unet` as is (an already inflated UNet, e.g. the trainer's own, on its device)."""
    if video_unet is None:
        motion_adapter = motion_adapter.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
        # The same UNetMotionModel.from_unet2d the pipeline would call, but a module for another base model
        # becomes a one-line UserInputError instead of diffusers' size-mismatch RuntimeError.
        video_unet = inflate(pipe.unet, motion_adapter)
    else:
        motion_adapter = None  # already inside video_unet; registering it could move the pipeline's device
    components = dict(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=video_unet,  # a UNetMotionModel is used as is
        motion_adapter=motion_adapter,
        scheduler=sampling_scheduler(pipe, beta_schedule),
    )
    if controlnet is not None:
        return AnimateDiffControlNetPipeline(**components, controlnet=controlnet)
    return AnimateDiffPipeline(**components)


def configure(video_pipe, settings: AnimateDiffSettings) -> None:
    """Long-video options as diffusers implements them (they change the pipeline's motion modules in place)."""
    video_pipe.set_progress_bar_config(disable=True)
    if settings.free_noise:
        video_pipe.enable_free_noise(context_length=settings.context_length, context_stride=settings.context_stride)
    elif getattr(video_pipe, "free_noise_enabled", False):
        video_pipe.disable_free_noise()
    if settings.free_init:
        video_pipe.enable_free_init(num_iters=settings.free_init_iters, use_fast_sampling=False)
    elif getattr(video_pipe, "free_init_enabled", False):
        video_pipe.disable_free_init()


def control_inputs(control: Control) -> dict:
    """The ControlNet arguments of AnimateDiffControlNetPipeline: the maps as PIL frames (the maps are uint8, so
    this is exact), one list per ControlNet, their scales and the guidance window."""
    videos = [[Image.fromarray(frame) for frame in (image * 255).round().byte().permute(0, 2, 3, 1).numpy()]
              for image in control.images]
    several = len(videos) > 1
    return dict(
        conditioning_frames=videos if several else videos[0],
        controlnet_conditioning_scale=list(control.scales) if several else float(control.scales[0]),
        control_guidance_start=control.guidance_start,
        control_guidance_end=control.guidance_end,
    )


def style_reference_for(video_pipe, style: StyleSettings, image, settings: AnimateDiffSettings, reporter: StageReporter):
    """The style image's reference pass for every UNet call of the pipeline (`stylevid.attention.reference`):
    its latent, clean or DDIM-inverted with the sampling scheduler through the image layers alone (the
    personalized image model the module was plugged into), under the style prompt."""
    device = video_pipe._execution_device
    embeds, _ = video_pipe.encode_prompt(style.prompt, device, 1, False)
    clean = encode_images(video_pipe.vae, image[None], device).to(embeds.dtype)
    trajectory = {}
    if style.reference == "inverted":
        with reporter.stage("style inversion", total=settings.steps), image_layers_only(video_pipe.unet) as image_unet:
            trajectory = ddim_invert(image_unet, video_pipe.scheduler, clean, embeds, settings.steps,
                                     on_step=lambda step: reporter.advance())
    return style_reference(video_pipe.unet, latents_at_timestep(trajectory, clean), embeds,
                           sharing_in_layers(style.layers, style.attention_sharing()))


@contextmanager
def prompt_inputs(video_pipe, settings: AnimateDiffSettings):
    """The pipeline's text arguments: the prompt, or with per-frame prompts one text context per frame.

    With FreeNoise, diffusers already takes {frame: prompt} and interpolates between those frames itself
    (`_encode_prompt_free_noise`), so the prompts go to it at their anchor frames. Without FreeNoise the pipeline
    gives every frame one context (it repeats the embedding over the frames), and it refuses per-frame
    `prompt_embeds`: then the prompts are encoded here, interpolated (`interpolate_frame_embeddings`, the same lerp
    as diffusers'), and a forward pre-hook on the UNet (and ControlNet) swaps the pipeline's repeated context for
    them. The hook swaps only a call whose context is exactly that repeated tensor, so the style reference pass
    (its own one-frame context) is left alone, and it is removed on exit.
    """
    prompts, negative = settings.frame_prompts, settings.negative_prompt or None
    if not prompts:
        yield dict(prompt=settings.prompt, negative_prompt=negative)
        return
    anchors = anchor_frames(len(prompts), settings.frames)
    if settings.free_noise:
        yield dict(prompt=dict(zip(anchors, prompts)), negative_prompt=negative)
        return
    device, frames = video_pipe._execution_device, settings.frames
    guided = settings.guidance_scale > 1  # the pipeline's own rule (do_classifier_free_guidance)
    # The first prompt and the negative exactly as the pipeline encodes a single prompt; the others beside it.
    first, unconditional = video_pipe.encode_prompt(prompts[0], device, 1, guided, negative)
    embeddings = torch.cat([first, *(video_pipe.encode_prompt(p, device, 1, False)[0] for p in prompts[1:])])
    per_frame = interpolate_frame_embeddings(embeddings, frames)
    # What the pipeline will pass for `prompt_embeds=first` (unconditional rows first), and its replacement.
    repeated = (torch.cat([unconditional, first]) if guided else first).repeat_interleave(frames, dim=0)
    replacement = torch.cat([unconditional.repeat_interleave(frames, dim=0), per_frame]) if guided else per_frame
    swapped = 0

    def swap_context(module, args, kwargs):
        nonlocal swapped
        context = kwargs.get("encoder_hidden_states")
        if context is None or context.shape != repeated.shape or not torch.equal(context, repeated):
            return None
        swapped += 1
        return args, {**kwargs, "encoder_hidden_states": replacement}

    modules = [video_pipe.unet] + ([video_pipe.controlnet] if getattr(video_pipe, "controlnet", None) is not None else [])
    hooks = [module.register_forward_pre_hook(swap_context, with_kwargs=True) for module in modules]
    try:
        yield dict(prompt_embeds=first, negative_prompt_embeds=unconditional if guided else None)
    finally:
        for hook in hooks:
            hook.remove()
    if not swapped:  # a diffusers that passes the context another way: refuse rather than ignore the prompts
        raise RuntimeError("per-frame prompts were not applied: the pipeline's UNet never received the expected text context")


def sample(video_pipe, settings: AnimateDiffSettings, reporter: StageReporter | None = None,
           control: Control | None = None, text_inputs: dict | None = None) -> VideoOutput:
    """One video from an assembled AnimateDiff pipeline (`animatediff_pipeline`), as diffusers' own loop samples it.

    `text_inputs`: the pipeline's text arguments when the caller made them (method=image_prompt's composed
    `prompt_embeds`); None: `prompt_inputs(video_pipe, settings)`."""
    reporter = reporter or StageReporter()
    settings.validate(int(video_pipe.unet.config.motion_max_seq_length))
    configure(video_pipe, settings)
    iterations = settings.free_init_iters if settings.free_init else 1

    def advance(pipeline, step, timestep, callback_kwargs):
        reporter.advance()
        return callback_kwargs

    style_image = None
    style = settings.style
    sharing = nullcontext()
    if style is not None:
        style_image = load_style_image(style.image, settings.height, settings.width)
        if style.strength != 0:  # strength 0 shares nothing: skip the reference pass, plain AnimateDiff exactly
            sharing = style_reference_for(video_pipe, style, style_image, settings, reporter)
    # Noise from a CPU generator: the same video on any device (diffusers draws on the generator's device).
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with sharing, reporter.stage("denoising", total=settings.steps * iterations), \
            (nullcontext(text_inputs) if text_inputs is not None else prompt_inputs(video_pipe, settings)) as text:
        latents = video_pipe(
            **text,
            num_frames=settings.frames,
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            output_type="latent",
            callback_on_step_end=advance,
            **(control_inputs(control) if control is not None else {}),
        ).frames  # (1, C, F, h, w)
    latents = latents[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    with reporter.stage("decoding"):
        frames = decode_to_uint8(video_pipe.vae, latents, settings.frames_per_decode or None, video_pipe._execution_device)
    return VideoOutput(frames=frames, latents=latents.cpu(), timings=dict(reporter.timings),
                       inputs=[style_image] if style_image is not None else [])


def generate(
    pipe,
    motion_adapter: MotionAdapter | None,
    settings: AnimateDiffSettings,
    reporter: StageReporter | None = None,
    video_unet: UNetMotionModel | None = None,
    control: Control | None = None,
) -> VideoOutput:
    """One video: `pipe` is the (personalized, LoRA-fused) SD pipeline, `motion_adapter` the motion module.

    `video_unet`, when given, is an already inflated UNet used as is (and `motion_adapter` may be None): the
    trainer's validation samples with its own UNet on its device instead of inflating `pipe.unet` again.
    """
    reporter = reporter or StageReporter()
    with reporter.stage("inflating"):
        video_pipe = animatediff_pipeline(pipe, motion_adapter, settings.beta_schedule, video_unet,
                                          control.controlnet if control is not None else None)
    return sample(video_pipe, settings, reporter, control)


@dataclass
class AnimateDiffModels:
    """What every video of an animatediff run shares: the assembled video pipeline and its ControlNet guidance."""

    video_pipe: AnimateDiffPipeline | AnimateDiffControlNetPipeline
    control: Control | None


@register
class AnimateDiff(VideoMethod):
    name = "animatediff"
    description = "AnimateDiff: a trained motion module plugged into a personalized SD 1.x model (motion.path=...)"
    supports = frozenset({"style", "style_prompt", "condition", "cpu_offload", "vae_slicing"})
    example = ('motion.path=guoyww/animatediff-motion-adapter-v1-5-2 condition=depth condition.video=room.mp4 '
               'prompt="a cosy living room, oil painting"')

    def settings(self, cfg: DictConfig) -> AnimateDiffSettings:
        return settings_from_config(cfg)

    def load(self, cfg, settings, device, dtype, conditions) -> AnimateDiffModels:
        pipe = load_image_pipeline(cfg, settings, dtype)  # on the CPU until the video pipeline is placed
        apply_image_lora(pipe, cfg)  # the personalized model: image LoRA first, then the motion module
        adapter = load_motion(cfg, dtype, unet=pipe.unet)  # refuses a module for another base
        settings.validate(max_seq_length=adapter.config.motion_max_seq_length)
        if settings.style is not None:
            check_layers(pipe.unet, settings.style.layers)
        control = build_control(cfg, conditions, pipe.unet, dtype, torch.device("cpu"), pipe.vae_scale_factor) if conditions else None
        video_pipe = animatediff_pipeline(pipe, adapter, settings.beta_schedule, controlnet=control.controlnet if control else None)
        return AnimateDiffModels(video_pipe=place(video_pipe, cfg, device), control=control)

    def generate(self, loaded: AnimateDiffModels, settings: AnimateDiffSettings, reporter: StageReporter) -> VideoOutput:
        return sample(loaded.video_pipe, settings, reporter, loaded.control)

    def record(self, cfg: DictConfig, settings: AnimateDiffSettings) -> dict:
        style = settings.style
        return {
            "motion": OmegaConf.to_container(cfg.motion),
            "lora": OmegaConf.to_container(cfg.lora),
            "style": style.image if style else None,
            "style_sharing": style.record() if style else None,
            "per_frame_prompts": settings.frame_prompts,
            "prompt_anchor_frames": anchor_frames(len(settings.frame_prompts), settings.frames) if settings.frame_prompts else None,
        }
