"""`run_generate(cfg)`: the generate task, independent of the CLI so tests can call it directly."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import values
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
from .io.images import decode_image
from .io.preview import write_preview
from .io.video_input import source_frame_rate
from .methods import animatediff, stylet2v0
from .methods.common import check_steps_fit, common_settings
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
    return ZeroShotSettings(
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


def style_settings(cfg: DictConfig) -> stylet2v0.StyleSettings:
    return stylet2v0.StyleSettings.from_config(cfg)  # the sharing preset and the keys that override it


def check_style_file(path: str) -> None:
    if not Path(path).is_file():
        raise UserInputError(f"style image not found: {path}")


@dataclass
class GenerateJob:
    """One video to make: everything checked, nothing loaded or written yet."""

    cfg: DictConfig
    settings: ZeroShotSettings | animatediff.AnimateDiffSettings
    style: stylet2v0.StyleSettings | None
    fps: float  # the output's frame rate (and the rate condition.video is read at)


# Keys of generate.yaml that only some methods read: set for any other method they would be ignored without a
# word, so they are refused instead (key -> the methods that read it).
ONLY_FOR = {
    "style": ("stylet2v0",),
    "style_prompt": ("stylet2v0",),
}


def check_keys_used(cfg: DictConfig, method: str, in_sweep: bool = False) -> None:
    """Refuse a key the method would ignore. In a sweep over methods (`-m method=t2v_zero,stylet2v0 style=...`,
    the paper's comparison) a shared key cannot be set per method, so there it is only a warning."""
    for key, methods in ONLY_FOR.items():
        if cfg.get(key) not in (None, "") and method not in methods:
            message = f"method={method} does not use {key}= (only {', '.join(methods)} does)"
            if not in_sweep:
                raise UserInputError(f"{message}; remove it")
            log.warning("%s; ignored in this sweep job", message)


def output_fps(cfg: DictConfig) -> float:
    """`fps=` when given; else the input video's own rate (Text2Video-Zero keeps the source's timing, so a
    conditioned video is read frame by frame and plays at the speed it was filmed); else the method's default."""
    if cfg.get("fps") is not None:
        return values.number(cfg.fps, "fps", above=0)
    video = cfg.condition.get("video")
    if video and cfg.condition.controls and not cfg.condition.get("maps"):
        rate = source_frame_rate(str(video), "condition.video")
        if rate:
            return rate
    return values.number(cfg.method.get("default_fps", 8), "method.default_fps", above=0)


def plan_job(cfg: DictConfig, in_sweep: bool = False) -> GenerateJob:
    """Check everything a user can get wrong in one video's config, before anything is created."""
    method = cfg.method.name
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not cfg.get("prompt"):
        raise UserInputError('no prompt: pass prompt="..." (or prompts=FILE for one video per row)')
    check_keys_used(cfg, method, in_sweep)
    if method == "animatediff":
        if cfg.condition.controls:
            raise UserInputError("structure conditions are not supported with method=animatediff yet")
        if cfg.get("cpu_offload"):
            raise UserInputError("cpu_offload is not supported with method=animatediff yet (it inflates its own UNet)")
        settings = animatediff.settings_from_config(cfg)
        settings.validate()
        return GenerateJob(cfg=cfg, settings=settings, style=None, fps=output_fps(cfg))
    settings = zero_shot_settings(cfg)
    settings.validate()
    style = style_settings(cfg) if method == "stylet2v0" else None
    if style is not None:
        style.validate()
        check_style_file(style.image)
        stylet2v0.load_style_image(style.image, settings.height, settings.width)  # fail early on an unreadable file
    return GenerateJob(cfg=cfg, settings=settings, style=style, fps=output_fps(cfg))


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
        conditions = prepare_condition_maps(cfg, settings.frames, settings.height, settings.width, job.fps, device, dtype)
    with reporter.stage("loading model"):
        pipe = load_pipeline(cfg.model, dtype)
        check_steps_fit(settings.steps, pipe.scheduler)
        if cfg.method.name == "animatediff":  # a personalized model: image LoRA, then the motion module
            animatediff.apply_image_lora(pipe, cfg)
            adapter = animatediff.load_motion(cfg, dtype, unet=pipe.unet)  # refuses a module for another base
            settings.validate(max_seq_length=adapter.config.motion_max_seq_length)
            return Loaded(pipe=pipe.to(device), device=device, dtype=dtype, conditions=None, control=None, motion_adapter=adapter)
        if cfg.get("cpu_offload") and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        control = build_control(cfg, conditions, pipe.unet, dtype, device, pipe.vae_scale_factor) if conditions else None
    return Loaded(pipe=pipe, device=device, dtype=dtype, conditions=conditions, control=control)


# The stages of `load_for`, shared by all videos of a run.
LOAD_STAGES = ("conditions", "loading model")


def model_record(model_cfg: DictConfig) -> dict:
    record = {"name": model_cfg.get("name"), "path": model_cfg.get("path")}
    if record["name"] == "tiny" and not record["path"]:  # random weights built in memory: the seed names them
        record["seed"] = int(model_cfg.get("seed", 0))
    return record


def preview_inputs(job: GenerateJob, loaded: Loaded) -> list:
    """What the video was made from, shown beside its frames in preview.png: the style image, then the
    first frame of each condition map."""
    inputs = [decode_image(job.style.image, "style image")] if job.style is not None else []
    if loaded.conditions is not None:
        inputs += [loaded.conditions.maps[kind][0] for kind in loaded.conditions.kinds]
    return inputs


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
            write_video(run_dir / "video.mp4", output.frames, fps=job.fps)
            if cfg.get("save_frames"):
                save_frames(run_dir / "frames", output.frames)
            write_preview(run_dir / "preview.png", output.frames, preview_inputs(job, loaded))
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        result = {
            "task": "generate",
            "method": cfg.method.name,
            "prompt": settings.prompt,
            "seed": settings.seed,
            "frames": settings.frames,
            "height": settings.height,
            "width": settings.width,
            "fps": job.fps,
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
            "files": {"video": "video.mp4", "preview": "preview.png", "frames": "frames/" if cfg.get("save_frames") else None},
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("wrote %s", run_dir)
    return run_dir


def run_generate(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Generate one video as `cfg` says (or one per row of `prompts=FILE`) and return the run directory."""
    reporter = reporter or StageReporter()
    if cfg.get("prompts"):
        return run_generate_batch(cfg, reporter, hydra_job_dir)
    job = plan_job(cfg, in_sweep=hydra_job_dir is not None)
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
        if "seed" in row:
            row["seed"] = values.seed(row["seed"], f"prompts file {path}, row {number}: seed")
    return rows


BATCH_PLAN = "batch_plan.json"  # written first: what the batch will make, so an interrupted one can be finished
BATCH_RESULT = "batch.json"  # written last: the batch is finished only with it


def run_generate_batch(cfg: DictConfig, reporter: StageReporter, hydra_job_dir: str | None) -> Path:
    """One video per row of `prompts=FILE`, as run directories `0000`, `0001`... of one sweep directory.

    Under torchrun the rows are sharded across ranks (each loads the model once); rank 0 chooses the
    directory. Every row is checked before anything is generated. An interrupted batch is finished by running
    the same command again with `output_dir=` its directory: finished rows are kept, the others made.
    """
    rows = read_prompt_rows(str(cfg.prompts))
    jobs = []
    for row in rows:
        row_cfg = cfg.copy()
        OmegaConf.set_struct(row_cfg, False)
        row_cfg.prompts = None
        for key, value in row.items():
            row_cfg[key] = value
        OmegaConf.set_struct(row_cfg, True)
        jobs.append(plan_job(row_cfg, in_sweep=hydra_job_dir is not None))

    rank = current_rank()
    plan = {"prompts": str(cfg.prompts), "rows": rows,
            "config": OmegaConf.to_container(cfg, resolve=True) | {"output_dir": None}}
    batch_dir = None
    if rank.is_main:
        batch_dir = choose_batch_dir(cfg, hydra_job_dir, plan)
    batch_dir = Path(broadcast_from_main(str(batch_dir) if batch_dir else None, rank))
    todo = [(index, job) for index, job in enumerate(jobs) if not (batch_dir / f"{index:04d}" / RESULT_FILE).exists()]
    mine = shard(todo, rank)
    if mine:
        loaded = load_for(jobs[0], reporter, rank)
        for index, job in mine:
            row_dir = batch_dir / f"{index:04d}"
            if row_dir.exists():  # what an interrupted run left of this row: stylevid's own, unfinished output
                shutil.rmtree(row_dir)
            execute_job(job, loaded, row_dir, reporter)
    done = gather_to_main([index for index, _ in mine], rank)
    if rank.is_main:
        made = sorted(i for part in done for i in part)
        write_json_atomic(batch_dir / BATCH_RESULT, {
            "prompts": str(cfg.prompts), "rows": len(jobs), "runs": [f"{i:04d}" for i in range(len(jobs))],
            "made_now": [f"{i:04d}" for i in made], "resumed": len(made) < len(jobs), "world_size": rank.world_size,
            "ranks": {str(r): [f"{i:04d}" for i in part] for r, part in enumerate(done)},
        })
    return batch_dir


def choose_batch_dir(cfg: DictConfig, hydra_job_dir: str | None, plan: dict) -> Path:
    """A new batch directory with its plan written, or, given `output_dir=` an unfinished batch of the same
    plan, that batch to finish."""
    given = cfg.get("output_dir")
    if given and (Path(given) / BATCH_PLAN).is_file():
        batch_dir = Path(given)
        if (batch_dir / BATCH_RESULT).exists():
            raise UserInputError(f"output_dir {batch_dir} already holds a finished batch; choose another directory")
        try:
            earlier = json.loads((batch_dir / BATCH_PLAN).read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != json.loads(json.dumps(plan, default=str)):
            raise UserInputError(
                f"output_dir {batch_dir} holds an unfinished batch of other prompts or settings; finish it with the "
                "same command, or choose another directory"
            )
        log.info("finishing the batch in %s", batch_dir)
        return batch_dir
    batch_dir = choose_run_dir(cfg, hydra_job_dir, f"{cfg.method.name}_batch")
    batch_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(batch_dir / BATCH_PLAN, plan)
    return batch_dir
