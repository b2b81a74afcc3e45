"""`run_generate(cfg)`: the generate task, independent of the CLI so tests can call it directly."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
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
from .conditions.control import ConditionMaps, cache_condition_maps, condition_scales, prepare_condition_maps
from .distributed import Rank, broadcast_from_main, current_rank, gather_to_main, rank_device, shard
from .io.video import save_frames, write_image, write_video
from .io.preview import write_preview
from .io.video_input import source_frame_rate
from .methods.base import FEATURES, VideoMethod, VideoSettings, get_method, methods_supporting
from .models.loading import resolve_device, resolve_dtype
from .progress import StageReporter
from .prompting import PromptRefiner, Refinement, prompt_refiner

log = logging.getLogger(__name__)


@dataclass
class GenerateJob:
    """One video to make: everything checked, nothing loaded or written yet."""

    cfg: DictConfig
    method: VideoMethod
    settings: VideoSettings  # the method's own settings dataclass
    fps: float  # the output's frame rate (and the rate condition.video is read at)
    refinement: Refinement | None = None  # prompt_refiner=llm: what the LLM made of the prompt


def check_features(cfg: DictConfig, method: VideoMethod, in_sweep: bool = False) -> None:
    """Refuse a feature the method does not declare (`VideoMethod.supports`): it would be ignored without a word.
    In a sweep over methods (`-m method=a,b style=...`, comparing a method with and without style) a shared key
    cannot be set per method, so there it is only a warning."""
    for feature, spec in FEATURES.items():
        if feature in method.supports or not spec.requested(cfg):
            continue
        able = methods_supporting(feature)
        message = f"method={method.name} does not support {spec.keys}" + (f" (methods that do: {', '.join(able)})" if able else "")
        if not in_sweep:
            raise UserInputError(f"{message}; remove it or choose another method")
        log.warning("%s; ignored in this sweep job", message)


def output_fps(cfg: DictConfig, method: VideoMethod | None = None, settings: VideoSettings | None = None) -> float:
    """`fps=` when given; else the rate the method's own output has (VideoGen's base rate times its temporal
    super-resolution factor); else the input video's own rate (Text2Video-Zero keeps the source's timing, so a
    conditioned video is read frame by frame and plays at the speed it was filmed); else the method's default."""
    if cfg.get("fps") is not None:
        return values.number(cfg.fps, "fps", above=0)
    own = method.output_fps(cfg, settings) if method is not None else None
    if own is not None:
        return own
    video = cfg.condition.get("video")
    if video and cfg.condition.controls and not cfg.condition.get("maps"):
        rate = source_frame_rate(str(video), "condition.video")
        if rate:
            return rate
    return values.number(cfg.method.get("default_fps", 8), "method.default_fps", above=0)


def plan_job(cfg: DictConfig, in_sweep: bool = False, refiner: PromptRefiner | None = None) -> GenerateJob:
    """Check everything a user can get wrong in one video's config, before anything is created; with a
    `refiner` (prompt_refiner=llm), then refine the prompt and build the method's settings from the refined one."""
    method = get_method(str(cfg.method.name))
    if method.needs_prompt and not cfg.get("prompt"):
        raise UserInputError('no prompt: pass prompt="..." (or prompts=FILE for one video per row)')
    check_features(cfg, method, in_sweep)
    settings = method.settings(cfg)  # first with the user's prompt: a bad value is refused before the LLM is asked
    refinement = None
    if refiner is not None:
        if not cfg.get("prompt"):
            raise UserInputError("prompt_refiner=llm needs a prompt to refine: pass prompt=\"...\"")
        refinement = refiner.refine(cfg)
        settings = method.settings(refinement.apply(cfg))  # job.cfg stays the user's: config.yaml reruns the run
        show_refinement(refinement)
    return GenerateJob(cfg=cfg, method=method, settings=settings, fps=output_fps(cfg, method, settings),
                       refinement=refinement)


def show_refinement(refinement: Refinement) -> None:
    """The original and refined prompts on the terminal (stderr: stdout carries only the run's path), once under
    torchrun. The CLI's progress display prints them above its bars."""
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(refinement.lines()), file=sys.stderr, flush=True)


@dataclass
class Loaded:
    """What every video of a run shares: the method's models and the condition maps."""

    models: object  # what `VideoMethod.load` returned
    device: torch.device
    dtype: torch.dtype
    conditions: ConditionMaps | None


def load_for(job: GenerateJob, reporter: StageReporter, rank: Rank = Rank()) -> Loaded:
    cfg, settings = job.cfg, job.settings
    device = rank_device(resolve_device(str(cfg.device)), rank)
    dtype = resolve_dtype(str(cfg.dtype), device)
    with reporter.stage("conditions"):  # the depth and pose annotators run on the generation's device
        conditions = prepare_condition_maps(cfg, settings.frames, settings.height, settings.width, job.fps, device, dtype)
    with reporter.stage("loading model"):
        models = job.method.load(cfg, settings, device, dtype, conditions)
    return Loaded(models=models, device=device, dtype=dtype, conditions=conditions)


# The stages of `load_for`, shared by all videos of a run.
LOAD_STAGES = ("conditions", "loading model")


def model_record(model_cfg: DictConfig) -> dict:
    record = {"name": model_cfg.get("name"), "path": model_cfg.get("path")}
    if record["name"] == "tiny" and not record["path"]:  # random weights built in memory: the seed names them
        record["seed"] = int(model_cfg.get("seed", 0))
    return record


def execute_job(job: GenerateJob, loaded: Loaded, run_dir: Path, reporter: StageReporter) -> Path:
    """Generate the video into `run_dir` and write its files, `result.json` last."""
    cfg, settings, device = job.cfg, job.settings, loaded.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Each video times its own stages afresh; the loading stages, done once for all videos, stay in every record.
    reporter.timings = {name: seconds for name, seconds in reporter.timings.items() if name in LOAD_STAGES}
    with run_directory(run_dir):
        started = time.perf_counter()
        cached_maps = cache_condition_maps(loaded.conditions, run_dir) if loaded.conditions else {}
        output = job.method.generate(loaded.models, settings, reporter)
        with reporter.stage("writing"):
            write_video(run_dir / "video.mp4", output.frames, fps=job.fps)
            if cfg.get("save_frames"):
                save_frames(run_dir / "frames", output.frames)
            # beside the frames: what the video was made from (the style image, the first frame of each map)
            shown = output.inputs + ([loaded.conditions.maps[kind][0] for kind in loaded.conditions.kinds] if loaded.conditions else [])
            write_preview(run_dir / "preview.png", output.frames, shown)
            for name, image in output.files.items():  # what the method made on the way (VideoGen's reference image)
                write_image(run_dir / name, image)
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
            "guidance_scale": settings.guidance_scale,
            "negative_prompt": settings.negative_prompt,
            **(job.refinement.record() if job.refinement else {}),  # prompt_original, prompt_refined, prompt_refiner
            "model": model_record(cfg.model),
            "conditions": {
                "kinds": loaded.conditions.kinds if loaded.conditions else [],
                "video": cfg.condition.get("video"),
                "maps": cached_maps,
                "scales": condition_scales(cfg, loaded.conditions.kinds) if loaded.conditions else [],
            },
            **job.method.record(cfg, settings),  # the method's own fields (its settings, its models)
            "device": str(device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "timings_s": {**reporter.timings, "total_generate": time.perf_counter() - started},
            "memory": peak_memory(device),
            "versions": versions(),
            "files": {"video": "video.mp4", "preview": "preview.png", "frames": "frames/" if cfg.get("save_frames") else None,
                      **{Path(name).stem: name for name in output.files}},
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("wrote %s", run_dir)
    return run_dir


def run_generate(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Generate one video as `cfg` says (or one per row of `prompts=FILE`) and return the run directory."""
    reporter = reporter or StageReporter()
    if cfg.get("prompts"):
        return run_generate_batch(cfg, reporter, hydra_job_dir)
    with prompt_refiner(cfg, reporter, in_sweep=hydra_job_dir is not None) as refiner:
        job = plan_job(cfg, in_sweep=hydra_job_dir is not None, refiner=refiner)
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
    with prompt_refiner(cfg, reporter, in_sweep=hydra_job_dir is not None) as refiner:  # one LLM for every row
        for row in rows:
            row_cfg = cfg.copy()
            OmegaConf.set_struct(row_cfg, False)
            row_cfg.prompts = None
            for key, value in row.items():
                row_cfg[key] = value
            OmegaConf.set_struct(row_cfg, True)
            jobs.append(plan_job(row_cfg, in_sweep=hydra_job_dir is not None, refiner=refiner))

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
