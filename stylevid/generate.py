"""`run_generate(cfg)`: the generate task, independent of the CLI so tests can call it directly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

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
from .conditions.control import build_control, cache_condition_maps, prepare_condition_maps
from .io.video import save_frames, write_video
from .methods import stylet2v0
from .methods.t2v_zero import ZeroShotSettings, ZeroShotVideo
from .models.loading import load_pipeline, resolve_device, resolve_dtype
from .progress import StageReporter

log = logging.getLogger(__name__)
METHODS = ("t2v_zero", "stylet2v0")


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
    method = cfg.method
    t0, t1 = method.get("t0"), method.get("t1")
    if t0 is None or t1 is None:
        default_t0, default_t1 = default_step_counts(int(cfg.steps))
        t0 = default_t0 if t0 is None else t0
        t1 = default_t1 if t1 is None else t1
    return ZeroShotSettings(
        prompt=str(cfg.prompt),
        negative_prompt=str(cfg.get("negative_prompt") or ""),
        frames=int(cfg.frames),
        height=int(cfg.height),
        width=int(cfg.width),
        steps=int(cfg.steps),
        guidance_scale=float(cfg.guidance_scale),
        seed=int(cfg.seed),
        t0=int(t0),
        t1=int(t1),
        motion_field_strength_x=float(method.motion_field_strength_x),
        motion_field_strength_y=float(method.motion_field_strength_y),
        chunk_size=int(cfg.chunk_size),
        smooth_background=bool(method.smooth_background),
        smoothing_alpha=float(method.smoothing_alpha),
        smoothing_threshold=float(method.smoothing_threshold),
        frames_per_decode=1 if cfg.get("vae_slicing") else 0,
    )


def style_settings(cfg: DictConfig) -> stylet2v0.StyleSettings:
    if not cfg.get("style"):
        raise UserInputError("method=stylet2v0 needs a style image: pass style=path/to/image.png")
    method = cfg.method
    return stylet2v0.StyleSettings(
        image=str(cfg.style),
        strength=float(method.strength),
        layers=list(method.layers),
        adain_queries=bool(method.adain_queries),
        adain_keys=bool(method.adain_keys),
        attend_to_reference=bool(method.attend_to_reference),
        reference_score_shift=float(method.reference_score_shift),
        prompt=str(cfg.get("style_prompt") or ""),
    )


def check_style_file(path: str) -> None:
    if not Path(path).is_file():
        raise UserInputError(f"style image not found: {path}")


def run_generate(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Generate one video as `cfg` says and return its run directory.

    Everything a user can get wrong is checked before the run directory is created.
    """
    reporter = reporter or StageReporter()
    method = cfg.method.name
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    settings = zero_shot_settings(cfg)
    settings.validate()
    style = style_settings(cfg) if method == "stylet2v0" else None
    if style is not None:
        check_style_file(style.image)
        stylet2v0.load_style_image(style.image, settings.height, settings.width)  # fail early on an unreadable file
    if cfg.fps <= 0:
        raise UserInputError(f"fps must be positive, got {cfg.fps}")
    with reporter.stage("conditions"):
        conditions = prepare_condition_maps(cfg, settings.frames, settings.height, settings.width, float(cfg.fps))

    if cfg.get("output_dir"):
        run_dir = check_output_dir(cfg.output_dir)
    elif hydra_job_dir is not None:  # a multirun job: Hydra chose <sweep dir>/<job number>_<method>
        run_dir = check_output_dir(hydra_job_dir)
    else:
        run_dir = default_run_dir(cfg.get("outputs_root", "outputs"), "generate", method)

    device = resolve_device(str(cfg.device))
    dtype = resolve_dtype(str(cfg.dtype), device)
    with reporter.stage("loading model"):
        pipe = load_pipeline(cfg.model, dtype)
        if cfg.get("cpu_offload") and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        control = build_control(cfg, conditions, pipe.unet, dtype, device) if conditions else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with run_directory(run_dir):
        started = time.perf_counter()
        cached_maps = cache_condition_maps(conditions, run_dir) if conditions else {}
        if style is not None:
            output = stylet2v0.generate(pipe, settings, style, reporter, control=control)
        else:
            output = ZeroShotVideo(pipe, reporter)(settings, control=control)
        with reporter.stage("writing"):
            write_video(run_dir / "video.mp4", output.frames, fps=float(cfg.fps))
            if cfg.get("save_frames"):
                save_frames(run_dir / "frames", output.frames)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        result = {
            "task": "generate",
            "method": method,
            "prompt": settings.prompt,
            "seed": settings.seed,
            "frames": settings.frames,
            "height": settings.height,
            "width": settings.width,
            "fps": float(cfg.fps),
            "steps": settings.steps,
            "t0": settings.t0,
            "t1": settings.t1,
            "model": {"name": cfg.model.get("name"), "path": cfg.model.get("path")},
            "style": style.image if style else None,
            "conditions": {
                "kinds": conditions.kinds if conditions else [],
                "video": cfg.condition.get("video"),
                "maps": cached_maps,
                "scales": control.scales if control else [],
            },
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
            "timings_s": {**reporter.timings, "total_generate": time.perf_counter() - started},
            "memory": peak_memory(device),
            "versions": versions(),
            "files": {"video": "video.mp4", "frames": "frames/" if cfg.get("save_frames") else None},
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("wrote %s", run_dir)
    return run_dir
