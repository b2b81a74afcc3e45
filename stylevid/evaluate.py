"""`run_evaluate(cfg)`: the evaluate task, independent of the CLI so tests can call it directly.

What it reads (exactly one of):
  run=DIR      one generate run: its video, with the prompt and style recorded in result.json (or config.yaml)
  sweep=DIR    every run directory under DIR that holds a result.json (a multirun sweep), one row per run,
               with the keys that differ between runs (method, seed, any other swept override) as columns
  videos=DIR   a folder of videos, with prompts= a .txt (one prompt per line, in sorted video order) or a .csv
               (video,prompt[,style]); real=DIR adds the real set for fvd

What it writes, into one new evaluation directory (never over an earlier one):
  metrics.json  per-video values, their aggregate (mean, std, n), set-level metrics (fvd, is, with the number of
                videos each used), the definition of every metric (describe_metrics: model ids, clamp policy),
                skipped videos with reasons (and videos too short for fvd / is); written last
  metrics.csv   one row per video or run
  report.html   one self-contained page: per video a strip of frames (an embedded PNG) beside its numbers
  config.yaml   the resolved config

A metric whose input a video lacks (a prompt, a style image, two frames) is recorded as not applicable for that
video. A video that cannot be read is logged and skipped (counted in metrics.json), unless none can be read.
A video shorter than fvd's / is's clip (metrics.fvd.num_frames, 16) is left out of those metrics the same way,
unless too few are left.
"""

from __future__ import annotations

import atexit
import base64
import csv
import dataclasses
import functools
import html
import io
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from .errors import UserInputError
from .distributed import Rank, broadcast_from_main, current_rank, gather_to_main, rank_device, shard
from .io.run_dir import RESULT_FILE, check_output_dir, default_run_dir, run_directory, versions, write_json_atomic
from .io.video_input import GIF_SUFFIXES, VIDEO_SUFFIXES, iter_frames, natural_sort_key, read_image
from .metrics import PER_VIDEO_METRICS, SET_METRICS, MetricsConfig, aggregate, compute_metrics, compute_set_metrics
from .metrics import describe_metrics
from .metrics.api import _NEEDS_IMAGE_PROMPT, _NEEDS_PROMPT, _NEEDS_STYLE, _USES_CLIP
from .progress import StageReporter

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
BATCH_FILE = "batch.json"  # written last by a prompts= batch (stylevid.generate.run_generate_batch)
BATCH_PLAN = "batch_plan.json"  # written first by it: the rows it will make
_ROW_DIR = re.compile(r"^\d{4}$")  # a batch's row directories: 0000, 0001, ...
EVALUATION_DIR = "evaluation"
INPUT_SUFFIXES = VIDEO_SUFFIXES + GIF_SUFFIXES
TINY_CLIP = "tiny"  # metrics.clip.model=tiny: a seeded random CLIP built on the fly, for tests and demos
_NEEDS_PAIRS = {"frame_consistency", "warp_error", "temporal_flicker", "motion"}
# Keys of a run's config.yaml never shown as swept: where it was written, or already a column of their own.
_NOT_SWEPT = {"output_dir", "outputs_root", "prompt", "style", "seed", "method.name"}
STRIP_FRAMES = 8
STRIP_HEIGHT = 96


@dataclass
class VideoItem:
    """One video to evaluate and what it is evaluated against."""

    name: str  # its row label: file name, run directory name, or run path relative to the sweep
    path: Path  # the video file
    prompt: str | None = None
    style: str | None = None  # style image path
    image_prompt: str | None = None  # method=image_prompt's subject image (image_fidelity), and its mask
    image_prompt_mask: str | None = None
    run: str | None = None  # the run directory it came from
    overrides: dict[str, Any] = field(default_factory=dict)  # method, seed, swept keys


def run_evaluate(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Evaluate what `cfg` names and return the evaluation directory (holding metrics.json).

    Everything a user can get wrong (inputs, prompt file, weight paths) is checked before the directory is made.
    """
    reporter = reporter or StageReporter()
    names = requested_metrics(cfg)
    per_video = [name for name in names if name in PER_VIDEO_METRICS]
    set_level = [name for name in names if name in SET_METRICS]
    items, home = collect_inputs(cfg)
    config, clip_label = metrics_config(cfg)  # before the process group starts (see tiny_clip_dir)
    check_weights(names, config, cfg)
    # Listed now, so that a bad real= is refused before any video is read.
    real_paths = list_videos(cfg.real, "real") if "fvd" in set_level and cfg.get("real") else None
    incomplete = incomplete_batches(Path(str(cfg.sweep)).expanduser()) if cfg.get("sweep") else []
    style_images = load_style_images(items)
    max_frames = _max_frames(cfg)
    check_set_inputs(set_level, config, len(items), max_frames)
    rank = current_rank()
    config = on_rank_device(config, rank)
    eval_dir = Path(broadcast_from_main(str(evaluation_dir(cfg, hydra_job_dir, home)) if rank.is_main else None, rank))

    if _USES_CLIP.intersection(per_video):
        from .metrics.clip import load_clip

        with reporter.stage("loading CLIP"):
            load_clip(config.clip.model, config.device, config.clip.batch_size)  # a missing model fails here

    keep_frames = _set_metric_frames(set_level, config)
    if rank.world_size > 1:
        # torchrun: every rank scores its share of the videos; rank 0 gathers them, in input order, and does
        # the rest (set-level metrics read the whole set there, since their features need all videos at once).
        started = time.perf_counter()
        mine = shard(list(range(len(items))), rank)
        part = evaluate_videos([items[i] for i in mine], per_video, config, style_images, max_frames, 0, reporter,
                               require_readable=False)
        parts = gather_to_main((mine, part[0], part[1]), rank)
        if not rank.is_main:
            return eval_dir
        order = {name: position for position, name in enumerate(item.name for item in items)}
        records = sorted((r for _, recs, _ in parts for r in recs), key=lambda r: order[r["video"]])
        skipped = sorted((k for _, _, skips in parts for k in skips), key=lambda k: order[k["video"]])
        require_some_readable(records, skipped)
        # The leading frames the set-level metrics use, read again here: only rank 0 computes them.
        kept_videos = [read_video(Path(record["path"]), keep_frames) for record in records] if keep_frames else []
    else:
        started = time.perf_counter()
        records, skipped, kept_videos = evaluate_videos(
            items, per_video, config, style_images, max_frames, keep_frames, reporter
        )
    # Right after reading, before any set-level network runs: videos too short for fvd / is, by file name.
    set_videos, set_skipped = set_metric_videos(records, kept_videos, set_level, config)
    real_videos, skipped_real = None, []
    if real_paths is not None:
        with reporter.stage("reading real videos"):
            real_videos, skipped_real = read_real_videos(real_paths, config.fvd.num_frames)

    with run_directory(eval_dir):
        set_values = {}
        if set_level:
            with reporter.stage("set metrics"):
                for name in set_level:
                    set_values.update(compute_set_metrics(set_videos[name], [name], config, real_videos=real_videos))

        strips = [record.pop("frame_strip_png") for record in records]
        summary = build_summary(cfg, names, config, clip_label, records, skipped, skipped_real, set_values,
                                set_skipped, incomplete)
        summary["timings_s"] = {**reporter.timings, "total_evaluate": time.perf_counter() - started}
        summary["world_size"] = rank.world_size
        with reporter.stage("writing"):
            write_csv(eval_dir / "metrics.csv", summary)
            (eval_dir / "report.html").write_text(render_html(summary, strips), encoding="utf-8")
            (eval_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_json_atomic(eval_dir / METRICS_FILE, _json_safe(summary))  # last: marks a finished evaluation
    log.info("wrote %s", eval_dir)
    return eval_dir


# --- what to compute -------------------------------------------------------------------------------------------


def requested_metrics(cfg: DictConfig) -> list[str]:
    """The metric names chosen with `metrics=[...]`, in the order given (each adds `metrics.names.<name>`)."""
    names = list((cfg.get("metrics") or {}).get("names") or {})
    if not names:
        raise UserInputError("no metrics requested: pass metrics=[clipsim,frame_consistency,...]")
    return names


def metrics_config(cfg: DictConfig) -> tuple[MetricsConfig, str]:
    """The library's options from the `metrics:` block, on `device=`; `metrics.clip.model=tiny` becomes a tiny
    random CLIP directory. Returns the config and the CLIP model as the user named it (for metrics.json)."""
    from .models.loading import resolve_device

    options = OmegaConf.to_container(cfg.metrics, resolve=True)
    options["device"] = str(resolve_device(str(cfg.get("device", "auto"))))
    clip_label = str(options.get("clip", {}).get("model", ""))
    if clip_label == TINY_CLIP:
        options["clip"]["model"] = str(tiny_clip_dir())
        clip_label = "tiny (random weights, seed 0: for tests and demos, not a measurement)"
    return MetricsConfig.from_dict(options), clip_label


def on_rank_device(config: MetricsConfig, rank: Rank) -> MetricsConfig:
    """Under torchrun, device=cuda (or auto on a GPU machine) means this rank's own GPU, cuda:LOCAL_RANK;
    otherwise every rank would evaluate on cuda:0."""
    return dataclasses.replace(config, device=str(rank_device(torch.device(config.device), rank)))


@functools.lru_cache(maxsize=1)
def tiny_clip_dir() -> Path:
    """Build the tiny CLIP once per process in a temporary directory (removed at exit).

    Call it before torchrun's process group starts: once one exists, transformers' save_pretrained writes the
    weights on rank 0 only, and the other ranks' directories would lack them."""
    from transformers.utils import logging as transformers_logging

    from .metrics.clip import build_tiny_clip

    directory = Path(tempfile.mkdtemp(prefix="stylevid-tiny-clip-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # "Writing model shards" bars would cut through our progress
    try:
        return build_tiny_clip(directory / "clip", seed=0)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def check_weights(names: Sequence[str], config: MetricsConfig, cfg: DictConfig) -> None:
    """Fail before any work when a requested metric's weights or reference set are missing."""
    from .metrics.common import resolve_weights_file
    from .metrics.fvd import I3D_KEY
    from .metrics.inception import C3D_KEY
    from .metrics.style import CSD_KEY, VGG_KEY

    needed = {
        "style_gram": (config.style.vgg_path, VGG_KEY, "style_gram (VGG-19)"),
        "style_csd": (config.style.csd_path, CSD_KEY, "style_csd (CSD)"),
        "fvd": (config.fvd.i3d_path, I3D_KEY, "fvd (I3D TorchScript)"),
        "is": (config.is_.c3d_path, C3D_KEY, "is (C3D UCF-101 TorchScript)"),
    }
    for name in names:
        if name in needed:
            resolve_weights_file(*needed[name])
    if "fvd" in names and config.fvd.stats_path and Path(config.fvd.stats_path).expanduser().exists():
        from .metrics.fvd import read_statistics

        read_statistics(config.fvd.stats_path)  # a broken cache is refused now, not after every video is read
    elif "fvd" in names and config.fvd.stats_path and not cfg.get("real"):
        raise UserInputError(
            f"metrics.fvd.stats_path {config.fvd.stats_path}: no such file; pass real=<folder of real videos> "
            "to compute (and cache) it"
        )
    if "fvd" in names and not cfg.get("real") and not config.fvd.stats_path:
        raise UserInputError(
            "fvd needs the real set: pass real=<folder of real videos> or metrics.fvd.stats_path=<.npz>"
        )
    if cfg.get("real") and "fvd" not in names:
        log.warning("real= is used only by fvd, which is not among metrics=%s", list(names))


def _max_frames(cfg: DictConfig) -> int | None:
    value = cfg.get("max_frames")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"max_frames must be a positive integer or null, got {value!r}")
    return value


@dataclass(frozen=True)
class SetMetricNeeds:
    """What a set-level metric needs of its input, and the config key a user changes when it is too much."""

    frames: int  # leading frames of each video
    frames_key: str
    videos: int  # least number of videos
    why: str


def set_metric_needs(name: str, config: MetricsConfig) -> SetMetricNeeds:
    if name == "fvd":
        return SetMetricNeeds(int(config.fvd.num_frames), "metrics.fvd.num_frames", 2, "a feature covariance")
    return SetMetricNeeds(int(config.is_.num_frames), "metrics.is.num_frames", int(config.is_.splits),
                          "one per split; lower metrics.is.splits")


def _set_metric_frames(set_level: Sequence[str], config: MetricsConfig) -> int:
    """How many leading frames of each video the set-level metrics use (0: keep none in memory)."""
    return max((set_metric_needs(name, config).frames for name in set_level), default=0)


def check_set_inputs(set_level: Sequence[str], config: MetricsConfig, num_videos: int, max_frames: int | None) -> None:
    """Fail before reading any video when the set-level metrics cannot run on this many videos or frames."""
    for name in set_level:
        needs = set_metric_needs(name, config)
        if max_frames is not None and max_frames < needs.frames:
            raise UserInputError(
                f"max_frames={max_frames} is fewer than the {needs.frames} frames {name} uses ({needs.frames_key})")
        if num_videos < needs.videos:
            raise UserInputError(f"{name} needs at least {needs.videos} videos ({needs.why}), got {num_videos}")


def set_metric_videos(
    records: Sequence[dict], kept: Sequence[np.ndarray], set_level: Sequence[str], config: MetricsConfig
) -> tuple[dict[str, list[np.ndarray]], list[dict]]:
    """Per set-level metric, the kept frames of the videos long enough for it (`kept` is aligned with `records`).

    A shorter video is left out of those metrics only (its per-video metrics stand), with a warning naming it,
    and listed in metrics.json; too few videos left is a one-line error naming the short ones."""
    needs = {name: set_metric_needs(name, config) for name in set_level}
    usable: dict[str, list[np.ndarray]] = {name: [] for name in set_level}
    short: list[dict] = []
    for record, frames in zip(records, kept):
        left_out = [name for name in set_level if record["num_frames"] < needs[name].frames]
        for name in set_level:
            if name not in left_out:
                usable[name].append(frames)
        if left_out:
            reason = f"{record['num_frames']} frames; " + ", ".join(
                f"{name} needs {needs[name].frames} ({needs[name].frames_key})" for name in left_out)
            log.warning("leaving %s out of %s: %s", record["video"], " and ".join(left_out), reason)
            short.append({"video": record["video"], "path": record["path"], "num_frames": record["num_frames"],
                          "metrics": left_out, "reason": reason})
    for name, need in needs.items():
        if len(usable[name]) < need.videos:
            named = [f"{entry['video']} has {entry['num_frames']}" for entry in short if name in entry["metrics"]]
            more = f" and {len(named) - 3} more" if len(named) > 3 else ""
            raise UserInputError(
                f"{name} needs at least {need.videos} videos ({need.why}) of {need.frames} frames ({need.frames_key}); "
                f"{len(usable[name])} of {len(records)} are that long ({', '.join(named[:3])}{more})"
            )
    return usable, short


# --- inputs ----------------------------------------------------------------------------------------------------


def collect_inputs(cfg: DictConfig) -> tuple[list[VideoItem], Path | None]:
    """The videos to evaluate, and the directory an evaluation belongs in by default (a run's or sweep's)."""
    given = [key for key in ("run", "sweep", "videos") if cfg.get(key)]
    if len(given) != 1:
        detail = f"got {', '.join(f'{key}=' for key in given)}" if given else "got none"
        raise UserInputError(f"pass exactly one of run=<run dir>, sweep=<sweep dir>, videos=<folder> ({detail})")
    if cfg.get("prompts") and given != ["videos"]:
        raise UserInputError("prompts= goes with videos=; runs carry their own prompt in result.json")
    if given == ["run"]:
        run_dir = Path(str(cfg.run)).expanduser()
        items, home = [run_item(run_dir, run_dir.name)], run_dir
    elif given == ["sweep"]:
        items, home = sweep_items(Path(str(cfg.sweep)).expanduser()), Path(str(cfg.sweep)).expanduser()
    else:
        items, home = folder_items(cfg.videos, cfg.get("prompts")), None
    if cfg.get("style"):  # one style image for every video: e.g. the baseline scored against the same style
        for item in items:
            item.style = str(cfg.style)
    return items, home


def run_item(run_dir: Path, name: str) -> VideoItem:
    """A generate run directory: video.mp4, and prompt, style, method, seed from result.json / config.yaml."""
    if not run_dir.is_dir():
        raise UserInputError(f"run directory not found: {run_dir}")
    result_path = run_dir / RESULT_FILE
    if not result_path.is_file():
        raise UserInputError(f"{run_dir} has no {RESULT_FILE}: not a finished stylevid run")
    try:
        result = json.loads(result_path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{result_path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    config = _read_run_config(run_dir)
    prompt = result.get("prompt") or config.get("prompt")
    style = result.get("style") or config.get("style")
    method = result.get("method") or (config.get("method") or {}).get("name")
    video = run_dir / ((result.get("files") or {}).get("video") or "video.mp4")
    return VideoItem(
        name=name,
        path=video,
        prompt=str(prompt) if prompt else None,
        style=_resolve_style(str(style), run_dir) if style else None,
        image_prompt=_resolve_style(str(result["image_prompt"]), run_dir) if result.get("image_prompt") else None,
        image_prompt_mask=_resolve_style(str(result["image_prompt_mask"]), run_dir) if result.get("image_prompt_mask") else None,
        run=str(run_dir),
        overrides={"method": method, "seed": result.get("seed", config.get("seed"))},
    )


def _read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        log.warning("%s cannot be parsed; using result.json only", path)
        return {}


def _resolve_style(style: str, base: Path) -> str:
    """A style path as recorded (relative to where the command ran), else relative to the run or prompt file."""
    path = Path(style).expanduser()
    if path.exists() or path.is_absolute() or not (base / path).exists():
        return str(path)
    return str(base / path)


def sweep_items(sweep_dir: Path) -> list[VideoItem]:
    """Every run under `sweep_dir` (any depth); the config keys that differ between runs become columns."""
    if not sweep_dir.is_dir():
        raise UserInputError(f"sweep directory not found: {sweep_dir}")
    run_dirs = sorted(
        (result.parent for result in sweep_dir.rglob(RESULT_FILE)),
        key=lambda path: natural_sort_key(path.relative_to(sweep_dir).as_posix()),
    )
    if not run_dirs:
        raise UserInputError(f"sweep {sweep_dir} holds no run directories (none has a {RESULT_FILE})")
    names = [run_dir.relative_to(sweep_dir).as_posix() for run_dir in run_dirs]
    items = [run_item(run_dir, run_dir.name if name == "." else name) for run_dir, name in zip(run_dirs, names)]
    flat_configs = [_flatten(_read_run_config(run_dir)) for run_dir in run_dirs]
    for key in swept_keys(flat_configs):
        for item, flat in zip(items, flat_configs):
            item.overrides[key] = flat[key]
    return items


def incomplete_batches(sweep_dir: Path) -> list[dict]:
    """The `prompts=` batches under `sweep_dir` that are missing rows, each as {batch, reason, missing, finished}.

    A batch directory holds its rows as 0000/, 0001/... and is finished only once its batch.json is written.
    A batch interrupted after its first row has 0000/ finished and no batch.json: evaluating the sweep would
    otherwise score 1 of its rows without a word. Logged as one warning line and kept in metrics.json.
    """
    batch_dirs = {path.parent for path in sweep_dir.rglob(BATCH_FILE)} | {path.parent for path in sweep_dir.rglob(BATCH_PLAN)}
    batch_dirs |= {path.parent for path in sweep_dir.rglob("*") if _ROW_DIR.match(path.name) and path.is_dir()}
    found = []
    for batch_dir in sorted(batch_dirs, key=lambda path: natural_sort_key(path.as_posix())):
        rows = sorted(path.name for path in batch_dir.iterdir() if _ROW_DIR.match(path.name) and path.is_dir())
        finished = [row for row in rows if (batch_dir / row / RESULT_FILE).is_file()]
        unfinished = [row for row in rows if row not in finished]
        missing, total, reason = set(unfinished), None, None
        record_path = batch_dir / BATCH_FILE
        if not record_path.is_file():
            reason = f"no {BATCH_FILE} (interrupted or still running)"
            # The plan, written before the first row, says how many rows the batch will have.
            total = _batch_rows(_read_json(batch_dir / BATCH_PLAN), batch_dir)
            missing |= {f"{index:04d}" for index in range(total or 0)} - set(finished)
        else:
            try:
                record = json.loads(record_path.read_text())
                listed = {str(run) for run in record.get("runs", [])}
            except (json.JSONDecodeError, AttributeError, TypeError):
                record, listed, reason = {}, set(), f"{BATCH_FILE} cannot be read"
            total = _batch_rows(record, batch_dir) or len(listed)
            expected = {f"{index:04d}" for index in range(total)}
            # A row counts as done when batch.json lists it and its run finished.
            missing |= (expected | listed) - (listed & set(finished))
        missing = sorted(missing)
        if reason is None and not missing:
            continue
        name = batch_dir.relative_to(sweep_dir).as_posix()
        found.append({
            "batch": batch_dir.name if name == "." else name,
            "reason": reason,
            "finished": len(finished),
            "rows": total,
            "missing": missing,
        })
    if found:
        parts = []
        for entry in found:
            counts = f"{entry['finished']} of {entry['rows']} rows finished" if entry["rows"] else (
                f"{entry['finished']} finished")
            missing = f", missing {_first_few(entry['missing'])}" if entry["missing"] else ""
            parts.append(f"{entry['batch']}: {(entry['reason'] + ', ') if entry['reason'] else ''}{counts}{missing}")
        log.warning("sweep %s has unfinished batches, only their finished rows are scored: %s", sweep_dir,
                    "; ".join(parts))
    return found


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _batch_rows(record: Mapping, batch_dir: Path) -> int | None:
    """A batch's number of rows: `rows` of batch.json (a count) or batch_plan.json (the rows themselves), else the
    rows of the prompts file it names (if still there)."""
    rows = record.get("rows")
    if isinstance(rows, list):
        return len(rows)
    if isinstance(rows, int) and not isinstance(rows, bool):
        return rows
    prompts = record.get("prompts")
    if not prompts:
        return None
    from .generate import read_prompt_rows  # the reader generate used for this batch

    for path in (Path(str(prompts)).expanduser(), batch_dir / str(prompts)):
        if path.is_file():
            try:
                return len(read_prompt_rows(str(path)))
            except (UserInputError, OSError, UnicodeDecodeError):
                return None
    return None


def _first_few(names: Sequence[str], count: int = 3) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def swept_keys(flat_configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys every run has, whose values are not all the same (e.g. guidance_scale in -m guidance_scale=5,7.5)."""
    if len(flat_configs) < 2:
        return []
    common = set(flat_configs[0]).intersection(*flat_configs[1:]) - _NOT_SWEPT
    return sorted(key for key in common if len({json.dumps(c[key], default=str) for c in flat_configs}) > 1)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def list_videos(location: str | Path, key: str) -> list[Path]:
    """The videos in a folder (sorted naturally, not recursive), or one video file."""
    path = Path(str(location)).expanduser()
    if not path.exists():
        raise UserInputError(f"{key}= {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in INPUT_SUFFIXES:
            raise UserInputError(f"{key}= {path} is not a video ({', '.join(INPUT_SUFFIXES)})")
        return [path]
    videos = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES),
        key=lambda p: natural_sort_key(p.name),
    )
    if not videos:
        raise UserInputError(f"{key}= {path} holds no videos ({', '.join(INPUT_SUFFIXES)})")
    return videos


def folder_items(videos: str, prompts: str | None) -> list[VideoItem]:
    paths = list_videos(videos, "videos")
    items = [VideoItem(name=path.name, path=path) for path in paths]
    if prompts:
        for item, (prompt, style) in zip(items, read_prompts(Path(str(prompts)).expanduser(), paths, str(videos))):
            item.prompt, item.style = prompt, style
    return items


def read_prompts(path: Path, videos: Sequence[Path], folder: str) -> list[tuple[str | None, str | None]]:
    """(prompt, style) per video from a .txt (one prompt per non-blank line, in the videos' sorted order) or a
    .csv with a header and columns video,prompt[,style] (video: the file name; style paths may be relative to
    the CSV). Any row that does not match the videos one to one is an error."""
    if not path.is_file():
        raise UserInputError(f"prompts= {path}: no such file")
    if path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) != len(videos):
            raise UserInputError(
                f"prompts= {path} has {len(lines)} prompts for {len(videos)} videos in {folder} "
                "(one prompt per line, in sorted video order)"
            )
        return [(line, None) for line in lines]
    if path.suffix.lower() != ".csv":
        raise UserInputError(f"prompts= {path} must be a .txt (one prompt per line) or a .csv (video,prompt[,style])")

    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [column.strip() for column in reader.fieldnames or []]
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    if "video" not in columns or "prompt" not in columns:
        raise UserInputError(f"prompts= {path} needs a header with columns video,prompt[,style], got {columns}")
    index = {video.name: i for i, video in enumerate(videos)}
    found: list[tuple[str | None, str | None] | None] = [None] * len(videos)
    for line, row in enumerate(rows, start=2):
        name = Path(row["video"]).name
        if name not in index:
            raise UserInputError(f"prompts= {path} line {line}: video {row['video']!r} is not in {folder}")
        if found[index[name]] is not None:
            raise UserInputError(f"prompts= {path} line {line}: a second row for video {name!r}")
        style = row.get("style") or None
        found[index[name]] = (row["prompt"] or None, _resolve_style(style, path.parent) if style else None)
    missing = [video.name for video, entry in zip(videos, found) if entry is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserInputError(f"prompts= {path} has no row for video {missing[0]!r}{more} in {folder}")
    return found  # type: ignore[return-value]


def image_prompt_of(item: VideoItem) -> np.ndarray:
    """The run's image prompt as the method saw it: masked to the subject when the run had a mask."""
    from .methods.image_prompt import ImagePromptSettings, read_image_prompt

    return read_image_prompt(ImagePromptSettings(prompt="", image_prompt=item.image_prompt,
                                                 image_prompt_mask=item.image_prompt_mask))


def load_style_images(items: Sequence[VideoItem]) -> dict[str, np.ndarray]:
    """Each distinct style image once, as uint8 [H, W, 3] (stylevid's one image reader, with its size limit);
    a missing or unreadable one names its video."""
    images: dict[str, np.ndarray] = {}
    for item in items:
        if item.style is None or item.style in images:
            continue
        try:
            images[item.style] = read_image(item.style, label="style image")
        except UserInputError as error:
            raise UserInputError(f"{error} (for {item.name}); pass style=<image> to use another") from None
    return images


def evaluation_dir(cfg: DictConfig, hydra_job_dir: str | None, home: Path | None) -> Path:
    """output_dir= exactly; a multirun job's directory; else <run or sweep>/evaluation (evaluation_2... when
    taken); else outputs/evaluate/<date>/<time>_evaluate. Never a directory holding anything already."""
    for given in (cfg.get("output_dir"), hydra_job_dir):
        if given:
            # metrics.json marks a finished evaluation (check_output_dir knows only result.json, a run's marker)
            if (Path(str(given)) / METRICS_FILE).exists():
                raise UserInputError(f"output_dir {given} already holds a finished evaluation; choose another directory")
            return check_output_dir(given)  # new or empty
    if home is not None:
        candidate, counter = home / EVALUATION_DIR, 1
        while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
            counter += 1
            candidate = home / f"{EVALUATION_DIR}_{counter}"
        return candidate
    return default_run_dir(cfg.get("outputs_root", "outputs"), "evaluate", "evaluate")


# --- evaluating ------------------------------------------------------------------------------------------------


def read_video(path: Path, max_frames: int | None = None, label: str = "video") -> np.ndarray:
    """All frames (or the first max_frames) of a video as uint8 [T, H, W, 3]; unreadable -> UserInputError."""
    frames = list(iter_frames(path, max_frames=max_frames, label=label))
    if not frames:
        raise UserInputError(f"{label} {path} has no frames")
    if len({frame.shape for frame in frames}) > 1:
        raise UserInputError(f"{label} {path} has frames of different sizes")
    return np.stack(frames)


def read_real_videos(paths: Sequence[Path], num_frames: int) -> tuple[list[np.ndarray], list[dict]]:
    """The first `num_frames` frames of each real video (for fvd), skipping, with a warning naming the file, the
    unreadable and the shorter ones; fewer than 2 left (fvd's covariance) is a one-line error."""
    videos, skipped = [], []
    for path in paths:
        try:
            frames = read_video(path, num_frames, "real")
        except UserInputError as error:
            log.warning("skipping %s: %s", path, error)
            skipped.append({"video": str(path), "reason": str(error)})
            continue
        if len(frames) < num_frames:
            reason = f"{len(frames)} frames; fvd needs {num_frames} (metrics.fvd.num_frames)"
            log.warning("skipping real video %s: %s", path.name, reason)
            skipped.append({"video": str(path), "reason": reason})
            continue
        videos.append(frames)
    if len(videos) < 2:
        first = f"; {Path(skipped[0]['video']).name}: {skipped[0]['reason']}" if skipped else ""
        raise UserInputError(f"fvd needs at least 2 usable real videos, {len(videos)} of {len(paths)} are{first}")
    return videos, skipped


def applicable_metrics(names: Sequence[str], item: VideoItem, num_frames: int) -> tuple[list[str], dict[str, str]]:
    """Split the per-video metrics into those this video has the inputs for and the rest, with the reason."""
    applicable, not_applicable = [], {}
    for name in names:
        if name in _NEEDS_PROMPT and not item.prompt:
            not_applicable[name] = "no prompt"
        elif name in _NEEDS_STYLE and not item.style:
            not_applicable[name] = "no style image"
        elif name in _NEEDS_IMAGE_PROMPT and not item.image_prompt:
            not_applicable[name] = "no image prompt"
        elif name in _NEEDS_PAIRS and num_frames < 2:
            not_applicable[name] = "needs at least 2 frames"
        else:
            applicable.append(name)
    return applicable, not_applicable


def evaluate_videos(
    items: Sequence[VideoItem],
    names: Sequence[str],
    config: MetricsConfig,
    style_images: Mapping[str, np.ndarray],
    max_frames: int | None,
    keep_frames: int,
    reporter: StageReporter,
    require_readable: bool = True,
) -> tuple[list[dict], list[dict], list[np.ndarray]]:
    """Per-video metrics of every readable video: (records, skipped videos, the leading `keep_frames` frames of
    each readable video for set-level metrics). `require_readable=False` lets a torchrun shard come back empty."""
    records, skipped, kept = [], [], []
    with reporter.stage("evaluating", total=len(items)):
        for item in items:
            try:
                frames = read_video(item.path, max_frames)
            except UserInputError as error:  # warned about below, unless no video is readable (then one error)
                skipped.append({"video": item.name, "path": str(item.path), "reason": str(error)})
                reporter.advance()
                continue
            applicable, not_applicable = applicable_metrics(names, item, len(frames))
            style = style_images.get(item.style) if item.style else None
            subject = image_prompt_of(item) if _NEEDS_IMAGE_PROMPT.intersection(applicable) else None
            values = compute_metrics(frames, item.prompt, style, applicable, config, subject) if applicable else {}
            records.append({
                "video": item.name,
                "path": str(item.path),
                "run": item.run,
                "prompt": item.prompt,
                "style": item.style,
                "overrides": item.overrides,
                "num_frames": int(frames.shape[0]),
                "height": int(frames.shape[1]),
                "width": int(frames.shape[2]),
                "metrics": values,
                "not_applicable": not_applicable,
                "frame_strip_png": frame_strip_png(frames),  # for report.html, not metrics.json
            })
            if keep_frames:
                kept.append(frames[:keep_frames].copy())
            reporter.advance()
    if require_readable:
        require_some_readable(records, skipped)
    for entry in skipped:
        log.warning("skipping %s: %s", entry["video"], entry["reason"])
    return records, skipped, kept


def require_some_readable(records: Sequence[dict], skipped: Sequence[dict]) -> None:
    if not records:
        raise UserInputError(f"none of the {len(skipped)} videos can be read; first: {skipped[0]['reason']}")


def frame_strip_png(frames: np.ndarray, count: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> bytes:
    """Up to `count` evenly spaced frames side by side, scaled to `height` px, as PNG bytes."""
    from PIL import Image

    indices = sorted(set(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int).tolist()))
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    tiles = [Image.fromarray(frames[i]).resize((width, height), Image.Resampling.BICUBIC) for i in indices]
    strip = Image.new("RGB", (width * len(tiles), height))
    for position, tile in enumerate(tiles):
        strip.paste(tile, (position * width, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --- results ---------------------------------------------------------------------------------------------------


def build_summary(
    cfg: DictConfig,
    names: Sequence[str],
    config: MetricsConfig,
    clip_label: str,
    records: list[dict],
    skipped: list[dict],
    skipped_real: list[dict],
    set_values: Mapping[str, float],
    set_skipped: Sequence[dict] = (),
    incomplete: Sequence[dict] = (),
) -> dict:
    definitions = describe_metrics(list(names), config)
    for entry in definitions.values():
        if "model" in entry:
            entry["model"] = clip_label
    per_video = [name for name in names if name in PER_VIDEO_METRICS]
    not_applicable: dict[str, dict] = {}
    for record in records:
        for name, reason in record["not_applicable"].items():
            entry = not_applicable.setdefault(name, {"count": 0, "reasons": []})
            entry["count"] += 1
            if reason not in entry["reasons"]:
                entry["reasons"].append(reason)
    for name, entry in not_applicable.items():
        if entry["count"] == len(records):
            log.warning("%s was not computed for any video (%s)", name, "; ".join(entry["reasons"]))
    source = {key: cfg.get(key) for key in ("run", "sweep", "videos", "prompts", "style", "real") if cfg.get(key)}
    return {
        "task": "evaluate",
        "source": {key: str(value) for key, value in source.items()},
        "metrics": list(names),
        "num_videos": len(records),
        "aggregate": aggregate([record["metrics"] for record in records]),
        "set_metrics": dict(set_values),
        "videos": records,
        "not_applicable": not_applicable,
        "skipped": {"count": len(skipped), "videos": skipped},
        "skipped_real": {"count": len(skipped_real), "videos": skipped_real} if skipped_real else None,
        # videos evaluated per video but too short for fvd / is (set_metrics holds how many each one used)
        "set_skipped": {"count": len(set_skipped), "videos": list(set_skipped)},
        # prompts= batches of a sweep that are missing rows (interrupted): only their finished rows are scored
        "incomplete_batches": list(incomplete),
        "columns": {"overrides": _override_columns(records), "metrics": per_video},
        "definitions": definitions,
        "device": config.device,
        "versions": versions(),
        "files": {"metrics": METRICS_FILE, "table": "metrics.csv", "report": "report.html", "config": "config.yaml"},
    }


def _override_columns(records: Sequence[Mapping]) -> list[str]:
    columns: list[str] = []
    for record in records:
        columns += [key for key in record["overrides"] if key not in columns]
    return columns


def _json_safe(value: Any) -> Any:
    """NaN and infinity (a fully occluded warp_error) become null: metrics.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_csv(path: Path, summary: Mapping) -> None:
    """One row per video (or run): its name, status, prompt, style, swept keys, then one column per metric;
    a skipped video has its reason in `status`, a not-applicable metric an empty cell."""
    overrides, metrics = summary["columns"]["overrides"], summary["columns"]["metrics"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "status", "prompt", "style", *overrides, *metrics])
        for record in summary["videos"]:
            values = record["metrics"]
            writer.writerow([
                record["video"], "ok", record["prompt"] or "", record["style"] or "",
                *(_cell(record["overrides"].get(key)) for key in overrides),
                *(_cell(values.get(name)) for name in metrics),
            ])
        for skipped in summary["skipped"]["videos"]:
            writer.writerow([skipped["video"], f"skipped: {skipped['reason']}", "", "",
                             *([""] * (len(overrides) + len(metrics)))])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_html(summary: Mapping, strips: Sequence[bytes]) -> str:
    """One dependency-free page: the aggregate, set-level metrics, then per video its frame strip and numbers."""
    escape = html.escape
    metrics = summary["columns"]["metrics"]
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>stylevid evaluation</title><style>',
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-variant-numeric:tabular-nums}th{background:#f3f3f3}"
        ".video{display:flex;gap:1.5em;align-items:flex-start;margin:1.2em 0;border-top:1px solid #ddd;"
        "padding-top:.8em}.video img{image-rendering:auto;max-width:70vw}.muted{color:#888}",
        "</style></head><body>",
        "<h1>stylevid evaluation</h1>",
        "<p>" + ", ".join(f"{escape(k)}=<code>{escape(v)}</code>" for k, v in summary["source"].items()) + "</p>",
        f"<p>{summary['num_videos']} videos evaluated, {summary['skipped']['count']} skipped.</p>",
        "<h2>Summary</h2><table><tr><th>metric</th><th>mean</th><th>std</th><th>n</th><th>better</th>"
        "<th>definition</th></tr>",
    ]
    for name in metrics:
        stats = summary["aggregate"].get(name, {"mean": None, "std": None, "n": 0})
        definition = summary["definitions"].get(name, {})
        better = {True: "higher", False: "lower"}.get(definition.get("higher_is_better"), "")
        parts.append(
            f"<tr><td>{escape(name)}</td><td>{_format(stats['mean'])}</td><td>{_format(stats['std'])}</td>"
            f"<td>{stats['n']}</td><td>{better}</td><td>{escape(str(definition.get('definition', '')))}</td></tr>"
        )
    parts.append("</table>")
    if summary["set_metrics"]:
        parts.append("<h2>Set-level</h2><table>")
        parts += [f"<tr><td>{escape(k)}</td><td>{_format(v)}</td></tr>" for k, v in summary["set_metrics"].items()]
        parts.append("</table>")
    if summary["skipped"]["count"]:
        parts.append("<h2>Skipped</h2><ul>")
        parts += [f"<li>{escape(s['video'])}: {escape(s['reason'])}</li>" for s in summary["skipped"]["videos"]]
        parts.append("</ul>")
    if summary["set_skipped"]["count"]:
        parts.append("<h2>Left out of set-level metrics</h2><ul>")
        parts += [f"<li>{escape(s['video'])}: {escape(s['reason'])}</li>" for s in summary["set_skipped"]["videos"]]
        parts.append("</ul>")
    parts.append("<h2>Videos</h2>")
    for record, strip in zip(summary["videos"], strips):
        rows = [("prompt", record["prompt"] or "—"), ("style", record["style"] or "—")]
        rows += [(key, _format(value)) for key, value in record["overrides"].items()]
        rows += [("frames", f"{record['num_frames']} × {record['height']}×{record['width']}")]
        for name in metrics:
            if name in record["metrics"]:
                rows.append((name, _format(record["metrics"][name])))
            else:
                reason = record["not_applicable"].get(name, "")
                rows.append((name, f'<span class="muted">n/a ({escape(reason)})</span>'))
        cells = "".join(
            f"<tr><th>{escape(k)}</th><td>{v if k in metrics else escape(str(v))}</td></tr>" for k, v in rows
        )
        image = base64.b64encode(strip).decode("ascii")
        parts.append(
            f'<div class="video"><div><h3>{escape(record["video"])}</h3>'
            f'<img alt="frames of {escape(record["video"])}" src="data:image/png;base64,{image}"></div>'
            f"<table>{cells}</table></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- terminal table (called by the CLI, which owns the console) -------------------------------------------------


def metrics_table(summary: Mapping, max_rows: int = 30):
    """A rich Table: one row per video (the first `max_rows`), then mean ± std (n) per metric."""
    from rich.table import Table

    overrides, metrics = summary["columns"]["overrides"], summary["columns"]["metrics"]
    caption = [f"{summary['num_videos']} videos"]
    if summary["skipped"]["count"]:
        caption.append(f"{summary['skipped']['count']} skipped")
    short = [entry["video"] for entry in (summary.get("set_skipped") or {}).get("videos", [])]  # absent in older files
    if short:
        more = ", ..." if len(short) > 3 else ""
        caption.append(f"{len(short)} too short for set metrics ({', '.join(short[:3])}{more})")
    caption += [f"{name} = {_format(value)}" for name, value in summary["set_metrics"].items()]
    table = Table(title="stylevid evaluate", caption=", ".join(caption))
    table.add_column("video", overflow="fold")
    for key in overrides:
        table.add_column(key)
    for name in metrics:
        higher = summary["definitions"].get(name, {}).get("higher_is_better")
        table.add_column(name + {True: " ↑", False: " ↓"}.get(higher, ""), justify="right")
    videos = summary["videos"]
    for record in videos[:max_rows]:
        table.add_row(
            record["video"],
            *(_format(record["overrides"].get(key)) for key in overrides),
            *(_format(record["metrics"].get(name)) for name in metrics),
        )
    if len(videos) > max_rows:
        table.add_row(f"… {len(videos) - max_rows} more (metrics.csv)", *[""] * (len(overrides) + len(metrics)))
    stats = [summary["aggregate"].get(name) for name in metrics]
    table.add_section()
    table.add_row(
        "mean ± std (n)",
        *[""] * len(overrides),
        *(f"{_format(s['mean'])} ± {_format(s['std'])} ({s['n']})" if s and s["n"] else "n/a" for s in stats),
        style="bold",
    )
    return table


def print_metrics_table(summary: Mapping | str | Path, console, max_rows: int = 30) -> None:
    """Print the table of an evaluation (its summary, its directory, or its metrics.json) to a rich Console."""
    if not isinstance(summary, Mapping):
        path = Path(summary)
        summary = json.loads((path / METRICS_FILE if path.is_dir() else path).read_text())
    console.print(metrics_table(summary, max_rows=max_rows))
