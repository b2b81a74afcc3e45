"""Temporal super-resolution of any video with VideoGen's back end (paper Sections 3.3-3.4).

1. The input (`input=`: a video file or a folder of frames, read as `condition.video` is) is encoded frame by frame
   by the model's VAE (posterior mean).
2. Its latents go through flow-based temporal super-resolution, k times x2 for `method.tsr.factor` = 2^k: F frames
   become (F - 1) x factor + 1, the input frames kept as they are (`stylevid.sampling.tsr`).
3. The latent video is decoded by the video decoder (or, with `method.decoder=image`, SD's decoder frame by frame).

The output plays at the input's rate times the factor, so it lasts as long as the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from .. import values
from ..errors import UserInputError
from ..progress import StageReporter
from ..sampling.vae import encode_images
from .base import MAX_SIDE, VideoMethod, VideoOutput, VideoSettings, load_image_pipeline, place, register
from .videogen import LatentVideoModels, LatentVideoSettings, decode_latent_video, load_latent_video, temporal_super_resolution


@dataclass
class TsrSettings(VideoSettings):
    input: str = ""
    input_fps: float = 8.0
    max_frames: int | None = None
    back: LatentVideoSettings | None = None


def input_geometry(cfg: DictConfig, path: str) -> tuple[int, int]:
    """height x width: the configured ones, or the input's own size rounded down to a multiple of 8."""
    from ..io.video_input import iter_frames

    if cfg.get("height") is not None and cfg.get("width") is not None:
        height = values.integer(cfg.height, "height", 8, MAX_SIDE)
        width = values.integer(cfg.width, "width", 8, MAX_SIDE)
    else:
        first = next(iter(iter_frames(path, label="input")), None)
        if first is None:
            raise UserInputError(f"input={path} holds no frame")
        height, width = (side // 8 * 8 for side in first.shape[:2])
    if height % 8 or width % 8 or min(height, width) < 8:
        raise UserInputError(f"height and width must be multiples of 8 (at least 8), got {height}x{width}")
    return height, width


def settings_from_config(cfg: DictConfig) -> TsrSettings:
    from ..io.video_input import source_frame_rate

    path = cfg.get("input")
    if not path:
        raise UserInputError("method=tsr needs input=<a video file or a folder of frames>")
    if not Path(str(path)).expanduser().exists():
        raise UserInputError(f"input={path} does not exist")
    path = str(Path(str(path)).expanduser())
    max_frames = cfg.method.get("max_frames")
    max_frames = values.integer(max_frames, "method.max_frames", 2) if max_frames is not None else None
    input_fps = source_frame_rate(path, "input") or values.number(cfg.method.input_fps, "method.input_fps", above=0)
    height, width = input_geometry(cfg, path)
    frames = count_frames(path, max_frames)
    if frames < 2:
        raise UserInputError(f"input={path} has {frames} frame(s); temporal super-resolution needs at least 2")
    return TsrSettings(prompt=str(cfg.get("prompt") or ""), frames=frames, height=height, width=width, steps=1,
                       guidance_scale=0.0, seed=values.seed(cfg.seed), input=path, input_fps=input_fps,
                       max_frames=max_frames, back=LatentVideoSettings.from_config(cfg))


def count_frames(path: str, max_frames: int | None) -> int:
    from ..io.video_input import frame_count

    total = frame_count(path, "input")
    return min(total, max_frames) if max_frames is not None else total


@dataclass
class TsrModels:
    pipe: object  # the image pipeline whose VAE encodes the input (and decodes with method.decoder=image)
    back: LatentVideoModels


@register
class TemporalSuperResolution(VideoMethod):
    name = "tsr"
    description = "VideoGen's flow-based temporal super-resolution of any video (x2, x4 or x8 the frame rate)"
    example = "model=toy input=clip.mp4 method.tsr.factor=8"
    needs_prompt = False

    def settings(self, cfg: DictConfig) -> TsrSettings:
        return settings_from_config(cfg)

    def output_fps(self, cfg: DictConfig, settings: TsrSettings) -> float:
        return settings.input_fps * settings.back.factor

    def load(self, cfg, settings: TsrSettings, device, dtype, conditions) -> TsrModels:
        pipe = place(load_image_pipeline(cfg, settings, dtype), cfg, device)
        return TsrModels(pipe=pipe, back=load_latent_video(settings.back, pipe.vae, device, dtype, int(cfg.model.get("seed", 0))))

    def generate(self, loaded: TsrModels, settings: TsrSettings, reporter: StageReporter) -> VideoOutput:
        from ..io.video_input import read_frames

        with reporter.stage("reading input"):
            frames = read_frames(settings.input, settings.frames, height=settings.height, width=settings.width,
                                 max_frames=settings.max_frames, label="input")
        with reporter.stage("encoding"):
            latents = encode_images(loaded.pipe.vae, frames, loaded.back.device)  # (F, 4, h, w)
        latents = latents.permute(1, 0, 2, 3)[None].float()  # (1, 4, F, h, w)
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        with reporter.stage("temporal super-resolution"):
            latents = temporal_super_resolution(settings.back, loaded.back, latents, generator)
        with reporter.stage("decoding"):
            video = decode_latent_video(settings.back, loaded.back, latents)
        return VideoOutput(frames=video, latents=latents[0].permute(1, 0, 2, 3).cpu(), timings=dict(reporter.timings),
                           inputs=[np.asarray(frames[0])])

    def record(self, cfg: DictConfig, settings: TsrSettings) -> dict:
        return {"input": settings.input, "input_fps": settings.input_fps, "input_frames": settings.frames,
                "output_frames": settings.back.output_frames(settings.frames), **settings.back.record()}
