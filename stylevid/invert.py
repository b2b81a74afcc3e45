"""`run_invert(cfg)`: the invert task — DDIM-invert an image or a video, and check the inversion by reconstructing it.

1. Read the frames (a video, a GIF, a folder of frames, or one image) at height x width.
2. Encode them with the VAE (posterior mean): the clean latents z_0, one batch row per frame.
3. DDIM inversion (diffusers' `DDIMInverseScheduler`, via `ddim_invert`): z_0 -> z_{t_1} -> ... -> z_{t_N},
   every step's latents kept and saved to `latents.safetensors`.
4. Reconstruction: DDIM sampling (diffusers' `DDIMScheduler`, eta=0) from z_{t_N} back to t=0 with the same
   prompt and guidance. A perfect inversion gives back z_0; the difference, in latents and as PSNR of the
   decoded frames against the input frames, measures how well these latents represent the input.

The run directory holds `input.mp4` (the resized frames that were inverted), `reconstruction.mp4`,
`latents.safetensors` (unless save_latents=false), `config.yaml` and `result.json` (written last).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from .errors import UserInputError
from .io.run_dir import (
    RESULT_FILE,
    check_output_dir,
    default_run_dir,
    peak_memory,
    run_directory,
    versions,
    write_json_atomic,
)
from .io.video import write_video
from .io.video_input import FRAME_SUFFIXES, _plan, fit_frame, read_image, select_frame_indices
from .models.loading import load_pipeline, resolve_device, resolve_dtype
from .progress import StageReporter
from .values import integer, number, seed
from .sampling.guidance import classifier_free
from .sampling.inversion import ddim_invert
from .sampling.vae import decode_to_uint8, encode_images

log = logging.getLogger(__name__)

LATENTS_FILE = "latents.safetensors"
CLEAN_KEY = "clean"
# Frame rate of the written videos when neither fps= nor the source gives one (a folder of frames, an image).
FALLBACK_FPS = 8.0
# Largest height or width: 8x SD1.5's 512 px. Larger frames would not fit the VAE and UNet in any GPU's memory,
# and a typo such as height=100000 would fail allocating the resized frames.
MAX_SIZE = 4096


def latent_key(timestep: int) -> str:
    """The safetensors key of the latents at `timestep`: t0001, ..., t0981 (sorted keys are in timestep order)."""
    return f"t{int(timestep):04d}"


# --- input ---------------------------------------------------------------------------------------


@dataclass
class InputFrames:
    frames: np.ndarray  # uint8 (F, height, width, 3)
    indices: list[int]  # which source frames they are
    playback_fps: float  # the rate at which these frames play in real time


def read_input(
    path: str,
    height: int,
    width: int,
    *,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
    fit: str = "crop",
) -> InputFrames:
    """The frames to invert, fitted to height x width; a bad path, file or selection raises `UserInputError`."""
    file = Path(path).expanduser()
    if file.is_file() and file.suffix.lower() in FRAME_SUFFIXES:
        # One image: a one-frame source (video_input reads videos, GIFs and folders, not single images).
        indices = select_frame_indices(1, start=start, stride=stride, max_frames=max_frames)
        if not indices:
            raise UserInputError(f"input {path} is a single image (one frame); start={start} selects none")
        # read_image is also how stylet2v0 loads its style image: inverting that image here gives its style latents.
        frame = read_image(file, height, width, fit, label="input")
        return InputFrames(frames=frame[None], indices=indices, playback_fps=fps or FALLBACK_FPS)

    # video_input's plan gives the source frame indices as well as the frames: they go into the metadata.
    source, indices = _plan(file, start, stride, max_frames, fps, None, "input")
    if not indices:
        raise UserInputError(f"input {path} has no frames after start={start} stride={stride} ({source.num_frames} in the source)")
    frames = np.stack([fit_frame(frame, height, width, fit) for frame in source.read(indices)])
    if source.resampled:
        rate = float(fps)
    elif source.timestamps is not None and source.num_frames > 1:
        rate = 1.0 / float(np.median(np.diff(source.timestamps)))
    else:
        rate = FALLBACK_FPS
    # Every stride-th frame of a clip plays in real time at 1/stride of its rate.
    return InputFrames(frames=frames, indices=indices, playback_fps=rate / stride)


def check_settings(cfg: DictConfig) -> dict:
    """Everything a user can get wrong in the config itself, read into plain values; the input file is checked by
    `read_input`, and steps against the model's training timesteps once its scheduler is known."""
    if OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise UserInputError("no input given: pass input=path/to/video.mp4 (or a GIF, a folder of frames, an image)")
    for key in ("prompt", "negative_prompt"):
        if OmegaConf.is_config(cfg.get(key)):  # prompt=[a,b] would become the text "['a', 'b']"
            raise UserInputError(f'{key} must be text, got {cfg.get(key)!r}; quote it: {key}="..."')
    settings = {
        "steps": integer(cfg.get("steps"), "steps", minimum=1),
        "height": integer(cfg.get("height"), "height", minimum=8, maximum=MAX_SIZE),
        "width": integer(cfg.get("width"), "width", minimum=8, maximum=MAX_SIZE),
        "start": integer(cfg.get("start"), "start", minimum=0),
        "stride": integer(cfg.get("stride"), "stride", minimum=1),
        "seed": seed(cfg.get("seed")),
        # 1 = the prompt alone, no guidance (see conf/invert.yaml for why more guidance inverts worse)
        "guidance_scale": number(cfg.get("guidance_scale"), "guidance_scale", minimum=1.0),
    }
    if settings["height"] % 8 or settings["width"] % 8:
        raise UserInputError(f"height and width must be positive multiples of 8, got {settings['height']}x{settings['width']}")
    frames = cfg.get("frames")
    settings["frames"] = None if frames is None else integer(frames, "frames", minimum=1)
    fps = cfg.get("fps")
    settings["fps"] = None if fps is None else number(fps, "fps", above=0)
    for key in ("vae_slicing", "save_latents"):
        if not isinstance(cfg.get(key), bool):
            raise UserInputError(f"{key} must be true or false, got {cfg.get(key)!r}")
    return settings


# --- the algorithm -------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct(
    unet,
    scheduler,
    noised_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    num_steps: int,
    negative_embeds: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling (eta=0) from `noised_latents` at the last of `num_steps` timesteps down to t=0.

    The exact reverse of `ddim_invert`'s steps with the same arguments: each step of the inverse scheduler
    is undone by one `DDIMScheduler` step, except that inversion predicts the noise at the previous level.
    """
    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(num_steps, device=noised_latents.device)
    use_guidance = guidance_scale > 1.0 and negative_embeds is not None
    rows = noised_latents.shape[0]
    embeds = prompt_embeds.expand(rows, -1, -1)
    if use_guidance:
        embeds = torch.cat([negative_embeds.expand(rows, -1, -1), embeds])
    latents = noised_latents
    for i, t in enumerate(sampler.timesteps):
        model_input = torch.cat([latents] * 2) if use_guidance else latents
        model_input = sampler.scale_model_input(model_input, t)
        noise = unet(model_input, t, encoder_hidden_states=embeds).sample
        if use_guidance:
            noise = classifier_free(noise, guidance_scale)
        latents = sampler.step(noise, t, latents, eta=0.0).prev_sample
        if on_step is not None:
            on_step(i)
    return latents


def psnr_db(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Per-frame PSNR in dB of two (F, H, W, C) frame stacks: 10 log10(peak² / MSE), inf where frames are equal."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"PSNR needs frames of one shape, got {reference.shape} and {test.shape}")
    mse = ((reference - test) ** 2).reshape(len(reference), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / mse)


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||estimate - target|| / ||target|| per batch row."""
    estimate, target = estimate.float().flatten(1), target.float().flatten(1)
    return (estimate - target).norm(dim=1) / target.norm(dim=1).clamp_min(1e-12)


def per_frame_and_mean(values) -> dict:
    """{"per_frame": [...], "mean": ...} for result.json; an infinite PSNR (identical frames) is written as null."""
    values = [float(v) for v in values]
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731  (JSON has no infinity)
    return {"per_frame": [finite(v) for v in values], "mean": finite(float(np.mean(values)))}


def encode_frames(vae, frames: np.ndarray, frames_per_encode: int | None) -> torch.Tensor:
    step = frames_per_encode or len(frames)
    return torch.cat([encode_images(vae, frames[i : i + step]) for i in range(0, len(frames), step)])


def save_latents(path: Path, trajectory: dict[int, torch.Tensor], clean: torch.Tensor, settings: dict) -> None:
    """One (F, 4, h/8, w/8) tensor per timestep plus the clean latents; the settings as string metadata
    (strings as they are, everything else as JSON)."""
    tensors = {latent_key(t): latents.detach().cpu().contiguous() for t, latents in trajectory.items()}
    tensors[CLEAN_KEY] = clean.detach().cpu().contiguous()
    metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()}
    save_file(tensors, str(path), metadata=metadata)


# --- the task ------------------------------------------------------------------------------------


def run_invert(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Invert `cfg.input` as `cfg` says and return the run directory.

    Everything a user can get wrong is checked before the run directory is created.
    """
    reporter = reporter or StageReporter()
    checked = check_settings(cfg)
    steps, guidance_scale = checked["steps"], checked["guidance_scale"]
    source = read_input(
        str(cfg.input),
        checked["height"],
        checked["width"],
        start=checked["start"],
        stride=checked["stride"],
        max_frames=checked["frames"],
        fps=checked["fps"],
        fit=str(cfg.get("fit", "crop")),
    )

    if cfg.get("output_dir"):
        run_dir = check_output_dir(cfg.output_dir)
    elif hydra_job_dir is not None:  # a multirun job: Hydra chose <sweep dir>/<job number>_invert
        run_dir = check_output_dir(hydra_job_dir)
    else:
        run_dir = default_run_dir(cfg.get("outputs_root", "outputs"), "invert", "invert")

    device = resolve_device(str(cfg.device))
    dtype = resolve_dtype(str(cfg.dtype), device)
    with reporter.stage("loading model"):
        pipe = load_pipeline(cfg.model, dtype)
        pipe.to(device)
    train_steps = int(pipe.scheduler.config.num_train_timesteps)
    if steps > train_steps:
        raise UserInputError(f"steps must be at most {train_steps} (the model's training timesteps), got {steps}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    frames_per_vae_call = 1 if cfg.get("vae_slicing") else None

    with run_directory(run_dir):
        started = time.perf_counter()
        use_guidance = guidance_scale > 1.0
        cond, uncond = pipe.encode_prompt(str(cfg.prompt), device, 1, use_guidance, str(cfg.negative_prompt or "") or None)

        # 1. The clean latents z_0, then z_t at every DDIM timestep.
        with reporter.stage("encoding"):
            clean = encode_frames(pipe.vae, source.frames, frames_per_vae_call).to(cond.dtype)
        with reporter.stage("inversion", total=steps):
            trajectory = ddim_invert(
                pipe.unet, pipe.scheduler, clean, cond, steps,
                negative_embeds=uncond, guidance_scale=guidance_scale, on_step=lambda i: reporter.advance(),
            )
        timesteps = sorted(trajectory)

        # 2. Back to t=0 from the most-noised latents, with the same prompt and guidance.
        with reporter.stage("reconstruction", total=steps):
            reconstructed = reconstruct(
                pipe.unet, pipe.scheduler, trajectory[timesteps[-1]], cond, steps,
                negative_embeds=uncond, guidance_scale=guidance_scale, on_step=lambda i: reporter.advance(),
            )
        with reporter.stage("decoding", total=2):
            reconstruction = decode_to_uint8(pipe.vae, reconstructed, frames_per_vae_call)
            reporter.advance()
            # The VAE's own round trip, z_0 decoded: what a perfect inversion would score, the reference for psnr_db.
            vae_round_trip = decode_to_uint8(pipe.vae, clean, frames_per_vae_call)
            reporter.advance()

        settings = {
            "input": str(cfg.input),
            "prompt": str(cfg.prompt),
            "negative_prompt": str(cfg.negative_prompt or ""),
            "steps": steps,
            "guidance_scale": guidance_scale,
            "model": {"name": cfg.model.get("name"), "path": cfg.model.get("path")},
            "timesteps": timesteps,
            "height": checked["height"],
            "width": checked["width"],
            "frame_indices": source.indices,
            "dtype": str(dtype).replace("torch.", ""),
            "latent_format": f"VAE posterior means times scaling_factor={pipe.vae.config.scaling_factor}, "
            f"shape (frames, {clean.shape[1]}, {clean.shape[2]}, {clean.shape[3]}); key t%04d is timestep t",
        }
        with reporter.stage("writing"):
            if cfg.get("save_latents", True):
                save_latents(run_dir / LATENTS_FILE, trajectory, clean, settings)
            write_video(run_dir / "input.mp4", source.frames, fps=source.playback_fps)
            write_video(run_dir / "reconstruction.mp4", reconstruction, fps=source.playback_fps)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        result = {
            "task": "invert",
            **settings,
            "seed": checked["seed"],
            "frames": len(source.indices),
            "fps": source.playback_fps,
            # PSNR of the decoded reconstruction against the input frames (mean over frames of per-frame PSNR).
            "psnr_db": per_frame_and_mean(psnr_db(source.frames, reconstruction)),
            "vae_round_trip_psnr_db": per_frame_and_mean(psnr_db(source.frames, vae_round_trip)),
            "latent_relative_error": per_frame_and_mean(relative_error(reconstructed, clean).cpu().numpy()),
            "device": str(device),
            "timings_s": {**reporter.timings, "total_invert": time.perf_counter() - started},
            "memory": peak_memory(device),
            "versions": versions(),
            "files": {
                "latents": LATENTS_FILE if cfg.get("save_latents", True) else None,
                "reconstruction": "reconstruction.mp4",
                "input": "input.mp4",
            },
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("wrote %s", run_dir)
    return run_dir
