"""`run_generate(cfg)`: the generate task, independent of the CLI so tests can call it directly."""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
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
from .conditions.control import ConditionMaps, build_control, cache_condition_maps, prepare_condition_maps
from .distributed import Rank, broadcast_from_main, current_rank, gather_to_main, rank_device, shard
from .io.video import save_frames, write_video
from .methods import animatediff, stylet2v0
from .methods.t2v_zero import ZeroShotSettings, ZeroShotVideo
from .models.loading import load_pipeline, resolve_device, resolve_dtype
from .progress import StageReporter

log = logging.getLogger(__name__)
METHODS = ("t2v_zero", "stylet2v0", "animatediff")


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
        layers=method.layers,  # a single string is one selector: StyleSettings wraps it in a list
        adain_queries=bool(method.adain_queries),
        adain_keys=bool(method.adain_keys),
        adain_values=bool(method.adain_values),
        attend_to_reference=bool(method.attend_to_reference),
        reference_score_shift=float(method.reference_score_shift),
        reference=str(method.reference),
        prompt=str(cfg.get("style_prompt") or ""),
    )


def check_style_file(path: str) -> None:
    if not Path(path).is_file():
        raise UserInputError(f"style image not found: {path}")


@dataclass
class GenerateJob:
    """One video to make: everything checked, nothing loaded or written yet."""

    cfg: DictConfig
    settings: ZeroShotSettings | animatediff.AnimateDiffSettings
    style: stylet2v0.StyleSettings | None


def plan_job(cfg: DictConfig) -> GenerateJob:
    """Check everything a user can get wrong in one video's config, before anything is created."""
    method = cfg.method.name
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not cfg.get("prompt"):
        raise UserInputError('no prompt: pass prompt="..." (or prompts=FILE for one video per row)')
    if method == "animatediff":
        if cfg.condition.controls:
            raise UserInputError("structure conditions are not supported with method=animatediff yet")
        if cfg.get("cpu_offload"):
            raise UserInputError("cpu_offload is not supported with method=animatediff yet (it inflates its own UNet)")
        if cfg.fps <= 0:
            raise UserInputError(f"fps must be positive, got {cfg.fps}")
        settings = animatediff.settings_from_config(cfg)
        settings.validate()
        return GenerateJob(cfg=cfg, settings=settings, style=None)
    settings = zero_shot_settings(cfg)
    settings.validate()
    style = style_settings(cfg) if method == "stylet2v0" else None
    if style is not None:
        style.validate()
        check_style_file(style.image)
        stylet2v0.load_style_image(style.image, settings.height, settings.width)  # fail early on an unreadable file
    if cfg.fps <= 0:
        raise UserInputError(f"fps must be positive, got {cfg.fps}")
    return GenerateJob(cfg=cfg, settings=settings, style=style)


@dataclass
class Loaded:
    """What every video of a run shares: the pipeline, the ControlNet guidance and its maps."""

    pipe: object
    device: torch.device
    dtype: torch.dtype
    conditions: ConditionMaps | None
    control: object | None
    motion_adapter: object | None = None  # animatediff


def load_for(job: GenerateJob, reporter: StageReporter, rank: Rank = Rank()) -> Loaded:
    cfg, settings = job.cfg, job.settings
    device = rank_device(resolve_device(str(cfg.device)), rank)
    dtype = resolve_dtype(str(cfg.dtype), device)
    with reporter.stage("conditions"):  # the depth and pose annotators run on the generation's device
        conditions = prepare_condition_maps(cfg, settings.frames, settings.height, settings.width, float(cfg.fps), device, dtype)
    with reporter.stage("loading model"):
        pipe = load_pipeline(cfg.model, dtype)
        if cfg.method.name == "animatediff":  # a personalized model: image LoRA, then the motion module
            animatediff.apply_image_lora(pipe, cfg)
            adapter = animatediff.load_motion(cfg, dtype, unet=pipe.unet)  # refuses a module for another base
            settings.validate(max_seq_length=adapter.config.motion_max_seq_length)
            return Loaded(pipe=pipe.to(device), device=device, dtype=dtype, conditions=None, control=None, motion_adapter=adapter)
        if cfg.get("cpu_offload") and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        control = build_control(cfg, conditions, pipe.unet, dtype, device) if conditions else None
    return Loaded(pipe=pipe, device=device, dtype=dtype, conditions=conditions, control=control)


# The stages of `load_for`, shared by all videos of a run.
LOAD_STAGES = ("conditions", "loading model")


def model_record(model_cfg: DictConfig) -> dict:
    record = {"name": model_cfg.get("name"), "path": model_cfg.get("path")}
    if record["name"] == "tiny" and not record["path"]:  # random weights built in memory: the seed names them
        record["seed"] = int(model_cfg.get("seed", 0))
    return record


def execute_job(job: GenerateJob, loaded: Loaded, run_dir: Path, reporter: StageReporter) -> Path:
    """Generate the video into `run_dir` and write its files, `result.json` last."""
    cfg, settings, style, device = job.cfg, job.settings, job.style, loaded.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Each video times its own stages afresh; the loading stages, done once for all videos, stay in every record.
    reporter.timings = {name: seconds for name, seconds in reporter.timings.items() if name in LOAD_STAGES}
    with run_directory(run_dir):
        started = time.perf_counter()
        cached_maps = cache_condition_maps(loaded.conditions, run_dir) if loaded.conditions else {}
        if loaded.motion_adapter is not None:
            output = animatediff.generate(loaded.pipe, loaded.motion_adapter, settings, reporter)
        elif style is not None:
            output = stylet2v0.generate(loaded.pipe, settings, style, reporter, control=loaded.control)
        else:
            output = ZeroShotVideo(loaded.pipe, reporter)(settings, control=loaded.control)
        with reporter.stage("writing"):
            write_video(run_dir / "video.mp4", output.frames, fps=float(cfg.fps))
            if cfg.get("save_frames"):
                save_frames(run_dir / "frames", output.frames)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        result = {
            "task": "generate",
            "method": cfg.method.name,
            "prompt": settings.prompt,
            "seed": settings.seed,
            "frames": settings.frames,
            "height": settings.height,
            "width": settings.width,
            "fps": float(cfg.fps),
            "steps": settings.steps,
            "t0": getattr(settings, "t0", None),
            "t1": getattr(settings, "t1", None),
            "model": model_record(cfg.model),
            "motion": OmegaConf.to_container(cfg.motion) if "motion" in cfg else None,
            "lora": OmegaConf.to_container(cfg.lora) if "lora" in cfg else None,
            "style": style.image if style else None,
            "conditions": {
                "kinds": loaded.conditions.kinds if loaded.conditions else [],
                "video": cfg.condition.get("video"),
                "maps": cached_maps,
                "scales": loaded.control.scales if loaded.control else [],
            },
            "device": str(device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "timings_s": {**reporter.timings, "total_generate": time.perf_counter() - started},
            "memory": peak_memory(device),
            "versions": versions(),
            "files": {"video": "video.mp4", "frames": "frames/" if cfg.get("save_frames") else None},
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("wrote %s", run_dir)
    return run_dir


def run_generate(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Generate one video as `cfg` says (or one per row of `prompts=FILE`) and return the run directory."""
    reporter = reporter or StageReporter()
    if cfg.get("prompts"):
        return run_generate_batch(cfg, reporter, hydra_job_dir)
    job = plan_job(cfg)
    run_dir = choose_run_dir(cfg, hydra_job_dir, cfg.method.name)
    return execute_job(job, load_for(job, reporter), run_dir, reporter)


def choose_run_dir(cfg: DictConfig, hydra_job_dir: str | None, name: str) -> Path:
    if cfg.get("output_dir"):
        return check_output_dir(cfg.output_dir)
    if hydra_job_dir is not None:  # a multirun job: Hydra chose <sweep dir>/<job number>_<method>
        return check_output_dir(hydra_job_dir)
    return default_run_dir(cfg.get("outputs_root", "outputs"), "generate", name)


# Columns a prompts CSV may carry besides `prompt`; each overrides the run's key of the same name.
ROW_KEYS = ("seed", "style", "negative_prompt", "style_prompt")


def read_prompt_rows(path: str) -> list[dict[str, str]]:
    """A .txt file (one prompt per non-empty line) or a .csv with a `prompt` column and optional ROW_KEYS."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"prompts file not found: {path}")
    if file.suffix.lower() == ".csv":
        with file.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise UserInputError(f"prompts file {path} has no `prompt` column (columns: {reader.fieldnames})")
            unknown = sorted(set(reader.fieldnames) - {"prompt", *ROW_KEYS})
            if unknown:
                raise UserInputError(f"prompts file {path}: unknown columns {', '.join(unknown)}; allowed: prompt, {', '.join(ROW_KEYS)}")
            rows = [{k: v for k, v in row.items() if v not in (None, "")} for row in reader]
    else:
        rows = [{"prompt": line.strip()} for line in file.read_text().splitlines() if line.strip()]
    if not rows:
        raise UserInputError(f"prompts file {path} holds no prompts")
    for number, row in enumerate(rows, start=1):
        if not row.get("prompt"):
            raise UserInputError(f"prompts file {path}, row {number}: empty prompt")
        if "seed" in row and not row["seed"].lstrip("-").isdigit():
            raise UserInputError(f"prompts file {path}, row {number}: seed {row['seed']!r} is not an integer")
    return rows


def run_generate_batch(cfg: DictConfig, reporter: StageReporter, hydra_job_dir: str | None) -> Path:
    """One video per row of `prompts=FILE`, as run directories `0000`, `0001`... of one sweep directory.

    Under torchrun the rows are sharded across ranks (each loads the model once); rank 0 chooses the
    directory. Every row is checked before anything is generated.
    """
    rows = read_prompt_rows(str(cfg.prompts))
    jobs = []
    for row in rows:
        row_cfg = cfg.copy()
        OmegaConf.set_struct(row_cfg, False)
        row_cfg.prompts = None
        for key, value in row.items():
            row_cfg[key] = int(value) if key == "seed" else value
        OmegaConf.set_struct(row_cfg, True)
        jobs.append(plan_job(row_cfg))

    rank = current_rank()
    batch_dir = None
    if rank.is_main:
        batch_dir = choose_run_dir(cfg, hydra_job_dir, f"{cfg.method.name}_batch")
        batch_dir.mkdir(parents=True, exist_ok=True)
    batch_dir = Path(broadcast_from_main(str(batch_dir) if batch_dir else None, rank))
    mine = shard(list(enumerate(jobs)), rank)
    loaded = load_for(jobs[0], reporter, rank)
    for index, job in mine:
        execute_job(job, loaded, batch_dir / f"{index:04d}", reporter)
    done = gather_to_main([index for index, _ in mine], rank)
    if rank.is_main:
        finished = sorted(i for part in done for i in part)
        write_json_atomic(batch_dir / "batch.json", {
            "prompts": str(cfg.prompts), "runs": [f"{i:04d}" for i in finished], "world_size": rank.world_size,
            "ranks": {str(r): [f"{i:04d}" for i in part] for r, part in enumerate(done)},
        })
    return batch_dir
