"""VideoGen (paper 001): reference-guided cascaded latent video diffusion, flow-based TSR and a video decoder.

The inference pipeline of the paper's Figure 2, top to bottom:

1. Reference image (Section 3.1): drawn from the prompt by a text-to-image model (`method.reference_model`, by
   default the loaded `model`), or the user's own (`reference=IMAGE`, image-to-video). `method.reference_mode=none`
   skips it: every stage then sees zeros where the reference latent goes (Table 3's ablation, on the same weights,
   which were trained with the reference dropped now and then).
2. Cascaded latent video diffusion (Section 3.2, `method.stages`, lowest resolution first): every stage is a
   spatio-temporal UNet with text cross-attention and an FPS embedding; the reference's VAE latent at the stage's
   resolution is concatenated to frame 0's input (zeros beside the other frames); a super-resolution stage also
   takes the x2 bilinearly upsampled output of the stage below, noised to `noise_level` first
   (`stylevid.sampling.cascade.sample_stage`). Classifier-free guidance on the text.
3. Flow-based temporal super-resolution (Section 3.3, `method.tsr`): in latent space, k times x2 for a factor 2^k
   (`stylevid.sampling.tsr`), so `frames` base frames become (frames - 1) x factor + 1.
4. Video decoder (Section 3.4, `method.decoder=video`): SD's decoder with temporal layers, in overlapping temporal
   chunks; `method.decoder=image` decodes frame by frame with the plain VAE decoder.

`result.json` records the reference, every stage's settings, the TSR factor and mode, the decoder and per-stage
timings; `reference.png` is saved in the run directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import values
from ..errors import UserInputError
from ..models import videogen_weights as weights
from ..progress import StageReporter
from ..sampling.vae import encode_images
from .base import VideoMethod, VideoOutput, VideoSettings, common_settings, load_image_pipeline, place, register

REFERENCE_MODES = ("first_frame", "none")
TSR_FACTORS = (1, 2, 4, 8)
TSR_MODES = ("flow", "slerp", "linear")
DECODERS = ("video", "image")
REFERENCE_FILE = "reference.png"


# --- settings ------------------------------------------------------------------------------------------------


@dataclass
class StageSettings:
    name: str
    source: str | None  # what to load (None: the tiny random stage of model=tiny)
    height: int
    width: int
    steps: int
    guidance_scale: float
    noise_level: int  # super-resolution stages: the augmentation timestep of the upsampled lower stage


@dataclass
class LatentVideoSettings:
    """The latent back end shared with method=tsr: temporal super-resolution and decoding."""

    root: Path | None
    factor: int
    mode: str
    flow_source: str | None
    refiner_source: str | None
    refine: bool
    refine_steps: int
    cutoff: float
    strength: float
    decoder: str
    decoder_source: str | None
    decode_chunk: int
    decode_overlap: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "LatentVideoSettings":
        method, tsr = cfg.method, cfg.method.tsr
        factor = values.integer(tsr.factor, "method.tsr.factor", 1)
        if factor not in TSR_FACTORS:
            raise UserInputError(f"method.tsr.factor must be one of {', '.join(map(str, TSR_FACTORS))} (2^k for k x2 steps), got {factor}")
        mode = str(tsr.mode)
        if mode not in TSR_MODES:
            raise UserInputError(f"method.tsr.mode must be one of {', '.join(TSR_MODES)}, got {mode!r}")
        decoder = str(method.decoder)
        if decoder not in DECODERS:
            raise UserInputError(f"method.decoder must be video or image, got {decoder!r}")
        chunk = values.integer(method.decode_chunk, "method.decode_chunk", 1)
        overlap = values.integer(method.decode_overlap, "method.decode_overlap", 0)
        if overlap >= chunk:
            raise UserInputError(f"method.decode_overlap={overlap} must be smaller than method.decode_chunk={chunk}")
        cutoff = values.number(tsr.cutoff, "method.tsr.cutoff", 0)
        if cutoff > 1:
            raise UserInputError(f"method.tsr.cutoff must be in [0, 1], got {cutoff}")
        strength = values.number(tsr.strength, "method.tsr.strength", 0)
        if not 0 < strength <= 1:
            raise UserInputError(f"method.tsr.strength must be in (0, 1], got {strength}")
        root = weights.weights_root(cfg)
        uses_flow, refine = factor > 1 and mode == "flow", factor > 1 and bool(tsr.refine)
        return cls(
            root=root, factor=factor, mode=mode,
            flow_source=weights.part_source(root, "latent_flow", tsr.get("flow_path"), "method.tsr.flow_path") if uses_flow else None,
            refiner_source=weights.part_source(root, "tsr_refiner", tsr.get("refiner_path"), "method.tsr.refiner_path") if refine else None,
            refine=refine, refine_steps=values.integer(tsr.steps, "method.tsr.steps", 1, 1000), cutoff=cutoff,
            strength=strength, decoder=decoder,
            decoder_source=weights.part_source(root, "video_decoder", method.get("decoder_path"), "method.decoder_path")
            if decoder == "video" else None,
            decode_chunk=chunk, decode_overlap=overlap,
        )

    def output_frames(self, frames: int) -> int:
        return (frames - 1) * self.factor + 1

    def record(self) -> dict:
        return {
            "weights": str(self.root) if self.root else None,
            "tsr": {"factor": self.factor, "mode": self.mode, "flow": self.flow_source, "refiner": self.refiner_source,
                    "refine": self.refine, "steps": self.refine_steps, "cutoff": self.cutoff,
                    "strength": self.strength},
            "decoder": {"kind": self.decoder, "path": self.decoder_source, "chunk": self.decode_chunk,
                        "overlap": self.decode_overlap},
        }


@dataclass
class VideoGenSettings(VideoSettings):
    frames: int = 8
    steps: int = 25
    reference_image: str | None = None
    reference_mode: str = "first_frame"
    reference_model: str | None = None
    reference_steps: int = 25
    reference_guidance_scale: float = 7.5
    base_fps: float = weights.DEFAULT_FPS
    stages: list[StageSettings] = field(default_factory=list)
    back: LatentVideoSettings | None = None


def stage_settings(cfg: DictConfig, common: dict, root: Path | None) -> list[StageSettings]:
    blocks = list(cfg.method.stages or [])
    if not blocks:
        raise UserInputError("method.stages is empty: the cascade needs at least a base stage")
    count, stages = len(blocks), []
    for index, block in enumerate(blocks):
        key = f"method.stages[{index}]"
        scale = 2 ** (count - 1 - index)
        if common["height"] % (8 * scale) or common["width"] % (8 * scale):
            raise UserInputError(
                f"height and width ({common['height']}x{common['width']}) must be multiples of {8 * scale} for a "
                f"{count}-stage cascade (each stage doubles the one below)"
            )
        height = values.integer(block.get("height") or common["height"] // scale, f"{key}.height", 8)
        width = values.integer(block.get("width") or common["width"] // scale, f"{key}.width", 8)
        if height % 8 or width % 8:
            raise UserInputError(f"{key}: height and width must be multiples of 8, got {height}x{width}")
        if stages and (height, width) != (2 * stages[-1].height, 2 * stages[-1].width):
            below = stages[-1]
            raise UserInputError(
                f"{key} is {height}x{width} but the stage below is {below.height}x{below.width}: every "
                "super-resolution stage doubles height and width"
            )
        name = str(block.get("name") or ("base" if index == 0 else f"sr{2 ** index}"))
        stages.append(StageSettings(
            name=name,
            source=weights.part_source(root, name, block.get("path"), f"{key}.path"),
            height=height, width=width,
            steps=values.integer(block.get("steps") or common["steps"], f"{key}.steps", 1, 1000),
            guidance_scale=values.number(block.get("guidance_scale") if block.get("guidance_scale") is not None
                                         else common["guidance_scale"], f"{key}.guidance_scale", 0),
            noise_level=values.integer(block.get("noise_level", 0) or 0, f"{key}.noise_level", 0, 999),
        ))
    last = stages[-1]
    if (last.height, last.width) != (common["height"], common["width"]):
        raise UserInputError(
            f"the last stage makes {last.height}x{last.width} but height x width is {common['height']}x{common['width']}"
        )
    return stages


def settings_from_config(cfg: DictConfig) -> VideoGenSettings:
    back = LatentVideoSettings.from_config(cfg)
    if cfg.get("frames") is None:  # the clip length the cascade was trained on
        cfg = OmegaConf.merge(cfg, {"frames": int(weights.manifest(back.root).get("frames", weights.DEFAULT_FRAMES))})
    common = common_settings(cfg)
    method = cfg.method
    mode = str(method.reference_mode)
    if mode not in REFERENCE_MODES:
        raise UserInputError(f"method.reference_mode must be first_frame or none, got {mode!r}")
    reference = cfg.get("reference")
    if reference:
        from ..io.images import decode_image

        decode_image(str(reference), "reference")  # unreadable: one line now, before any model loads
        if mode == "none":
            raise UserInputError("reference= and method.reference_mode=none contradict each other; drop one")
    fps = method.get("base_fps")
    base_fps = values.number(fps, "method.base_fps", above=0) if fps is not None else weights.training_fps(back.root)
    return VideoGenSettings(
        **common,
        reference_image=str(reference) if reference else None,
        reference_mode=mode,
        reference_model=str(method.reference_model) if method.get("reference_model") else None,
        reference_steps=values.integer(method.get("reference_steps") or common["steps"], "method.reference_steps", 1, 1000),
        reference_guidance_scale=values.number(
            method.reference_guidance_scale if method.get("reference_guidance_scale") is not None else common["guidance_scale"],
            "method.reference_guidance_scale", 0),
        base_fps=base_fps,
        stages=stage_settings(cfg, common, back.root),
        back=back,
    )


# --- loading -------------------------------------------------------------------------------------------------


@dataclass
class LatentVideoModels:
    """The back end's networks (None where the settings do not use them) and the schedulers they sample with."""

    vae: object
    flow_net: object | None
    refiner: object | None
    refiner_scheduler: object | None
    decoder: object | None
    device: torch.device


def stage_scheduler(pipe, root: Path | None):
    """DDIM on the noise schedule and prediction type the stages were trained with (the manifest's, else the image
    model's own scheduler)."""
    from diffusers import DDIMScheduler

    from ..training.diffusion import SCHEDULES

    recorded = weights.manifest(root)
    schedule = recorded.get("schedule")
    if schedule in SCHEDULES:
        return DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             prediction_type=str(recorded.get("prediction", "epsilon")), **SCHEDULES[schedule])
    return DDIMScheduler.from_config(pipe.scheduler.config)


def load_latent_video(back: LatentVideoSettings, vae, device: torch.device, dtype: torch.dtype,
                      seed: int = 0) -> LatentVideoModels:
    flow = weights.load_flow_net(back.flow_source, "method.tsr.flow_path", seed) if back.factor > 1 and back.mode == "flow" else None
    refiner, scheduler = weights.load_refiner(back.refiner_source, "method.tsr.refiner_path", seed) if back.refine else (None, None)
    decoder = weights.load_video_decoder(back.decoder_source, vae, "method.decoder_path") if back.decoder == "video" else None
    for model in (flow, refiner, decoder):
        if model is not None:
            model.to(device, dtype)
    return LatentVideoModels(vae=vae, flow_net=flow, refiner=refiner, refiner_scheduler=scheduler, decoder=decoder,
                             device=device)


@dataclass
class VideoGenModels:
    pipe: object  # the image pipeline: VAE, text encoder, tokenizer (and the default reference model)
    reference_pipe: object  # the text-to-image model that draws the reference
    stages: list  # VideoUNet per stage
    scheduler: object
    back: LatentVideoModels


# --- running ---------------------------------------------------------------------------------------------------


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from ..io.video_input import fit_frame

    return fit_frame(image, height, width, "crop")


def draw_reference(models: VideoGenModels, settings: VideoGenSettings) -> np.ndarray | None:
    """The reference image at the output resolution (uint8 H x W x 3), or None for reference_mode=none."""
    if settings.reference_mode == "none":
        return None
    if settings.reference_image:
        from ..io.images import decode_image

        return resize_image(decode_image(settings.reference_image, "reference"), settings.height, settings.width)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    image = models.reference_pipe(
        settings.prompt, negative_prompt=settings.negative_prompt or None, height=settings.height, width=settings.width,
        num_inference_steps=settings.reference_steps, guidance_scale=settings.reference_guidance_scale,
        generator=generator, output_type="np",
    ).images[0]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def temporal_super_resolution(back: LatentVideoSettings, models: LatentVideoModels, latents: torch.Tensor,
                              generator: torch.Generator) -> torch.Tensor:
    """(B, 4, F, h, w) scaled latents -> (B, 4, (F - 1) x factor + 1, h, w)."""
    from ..sampling.tsr import temporal_super_resolve

    if back.factor == 1:
        return latents
    return temporal_super_resolve(
        latents, factor=back.factor, mode=back.mode, flow_net=models.flow_net,
        refiner=models.refiner if back.refine else None, scheduler=models.refiner_scheduler,
        steps=back.refine_steps, cutoff=back.cutoff, strength=back.strength, generator=generator,
    )


@torch.no_grad()
def decode_latent_video(back: LatentVideoSettings, models: LatentVideoModels, latents: torch.Tensor) -> np.ndarray:
    """(1, 4, F, h, w) scaled latents -> uint8 (F, H, W, 3) frames, by the video decoder or the image decoder."""
    from ..sampling.vae import decode_to_uint8

    vae = models.vae
    if back.decoder == "image":
        return decode_to_uint8(vae, latents[0].permute(1, 0, 2, 3), back.decode_chunk, models.device)
    decoder = models.decoder
    unscaled = latents.to(models.device, decoder.dtype) / vae.config.scaling_factor
    pixels = decoder.decode(unscaled, chunk_frames=back.decode_chunk, overlap=back.decode_overlap)  # (1, 3, F, H, W)
    pixels = (pixels[0].float().permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).cpu().numpy()


def generate(models: VideoGenModels, settings: VideoGenSettings, reporter: StageReporter | None = None) -> VideoOutput:
    from ..sampling.cascade import sample_stage

    reporter = reporter or StageReporter()
    pipe, device = models.pipe, models.back.device
    with reporter.stage("reference", total=None if settings.reference_image else settings.reference_steps):
        reference = draw_reference(models, settings)
    guided = any(stage.guidance_scale > 1 for stage in settings.stages)
    text, negative = pipe.encode_prompt(settings.prompt, device, 1, guided, settings.negative_prompt or None)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = None
    for stage, unet in zip(settings.stages, models.stages):
        with reporter.stage(f"stage {stage.name}", total=stage.steps):
            reference_latent = None
            if reference is not None:
                reference_latent = encode_images(pipe.vae, resize_image(reference, stage.height, stage.width)[None], device)
            latents = sample_stage(
                unet, models.scheduler, text_embeddings=text, negative_embeddings=negative if guided else None,
                reference_latent=reference_latent, low_resolution=latents, fps=settings.base_fps,
                noise_level=stage.noise_level, frames=settings.frames, height_latent=stage.height // 8,
                width_latent=stage.width // 8, steps=stage.steps, guidance_scale=stage.guidance_scale,
                generator=generator, reference_mode=settings.reference_mode,
                callback=lambda *_: reporter.advance(),
            )
    with reporter.stage("temporal super-resolution"):
        latents = temporal_super_resolution(settings.back, models.back, latents, generator)
    with reporter.stage("decoding"):
        frames = decode_latent_video(settings.back, models.back, latents)
    return VideoOutput(frames=frames, latents=latents[0].permute(1, 0, 2, 3).cpu(), timings=dict(reporter.timings),
                       inputs=[reference] if reference is not None else [],
                       files={REFERENCE_FILE: reference} if reference is not None else {})


@register
class VideoGen(VideoMethod):
    name = "videogen"
    description = "VideoGen: a T2I reference image guides a cascaded latent video diffusion, flow-based TSR, a video decoder"
    example = 'model=toy prompt="a red circle moving right"'

    def settings(self, cfg: DictConfig) -> VideoGenSettings:
        return settings_from_config(cfg)

    def output_fps(self, cfg: DictConfig, settings: VideoGenSettings) -> float:
        """The base frames are `base_fps` apart; temporal super-resolution puts `factor` frames in each gap."""
        return settings.base_fps * settings.back.factor

    def load(self, cfg, settings: VideoGenSettings, device, dtype, conditions) -> VideoGenModels:
        from ..models.loading import load_pipeline

        pipe = place(load_image_pipeline(cfg, settings, dtype), cfg, device)
        reference_pipe = pipe
        if settings.reference_model and settings.reference_mode != "none" and not settings.reference_image:
            reference_pipe = place(load_pipeline(DictConfig({"name": "reference", "path": settings.reference_model}), dtype),
                                   cfg, device)
        seed = int(cfg.model.get("seed", 0))
        stages = [weights.load_stage(stage.source, "base" if index == 0 else "sr", f"method.stages[{index}].path", seed)
                  .to(device, dtype) for index, stage in enumerate(settings.stages)]
        scheduler = stage_scheduler(pipe, settings.back.root)
        back = load_latent_video(settings.back, pipe.vae, device, dtype, seed)
        return VideoGenModels(pipe=pipe, reference_pipe=reference_pipe, stages=stages, scheduler=scheduler, back=back)

    def generate(self, loaded: VideoGenModels, settings: VideoGenSettings, reporter: StageReporter) -> VideoOutput:
        return generate(loaded, settings, reporter)

    def record(self, cfg: DictConfig, settings: VideoGenSettings) -> dict:
        return {
            "output_frames": settings.back.output_frames(settings.frames),
            "videogen": {
                "reference": {"mode": settings.reference_mode, "image": settings.reference_image,
                              "model": settings.reference_model or ("the loaded model" if settings.reference_mode != "none" else None),
                              "steps": settings.reference_steps, "guidance_scale": settings.reference_guidance_scale,
                              "file": REFERENCE_FILE if settings.reference_mode != "none" else None},
                "base_fps": settings.base_fps,
                "stages": [asdict(stage) for stage in settings.stages],
                **settings.back.record(),
            },
        }
