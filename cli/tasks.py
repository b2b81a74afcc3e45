"""Task bodies run by Hydra: turn user errors into one line and exit code 2, draw progress with rich."""

from __future__ import annotations

import os
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from stylevid.errors import UserInputError

from .progress import stage_reporter

console = Console(stderr=True)


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError (a RuntimeError), or the CPU allocator's failure, which is a plain
    RuntimeError naming the bytes it could not get."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _hydra_job_dir() -> str | None:
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.runtime.output_dir if hydra_cfg.mode == RunMode.MULTIRUN else None


def _run(run_task, cfg: DictConfig, main_file: str):
    """Run a `run_<task>(cfg, reporter, hydra_job_dir)`; print where its main output is."""
    try:
        with stage_reporter(console) as reporter:
            run_dir = run_task(cfg, reporter=reporter, hydra_job_dir=_hydra_job_dir())
    except UserInputError as error:
        _fail(error)
    except PermissionError as error:  # a file the user may not read or write, found only when it is opened
        _fail(f"permission denied: {error.filename or error}")
    except (MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        _fail("out of memory (" + _first_line(error) + "); lower height/width/frames or chunk_size, "
              "or set vae_slicing=true / cpu_offload=true")
    # A batch (prompts=FILE) is a directory of runs: point at the directory itself.
    shown = run_dir / main_file if (run_dir / main_file).exists() else run_dir
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"[bold green]done:[/] {shown}", highlight=False, soft_wrap=True)
        if (run_dir / "preview.png").exists():
            console.print(f"[bold green]preview:[/] {run_dir / 'preview.png'}", highlight=False, soft_wrap=True)
        print(shown)
    return run_dir


def generate(cfg: DictConfig) -> None:
    from stylevid.generate import run_generate

    _run(run_generate, cfg, "video.mp4")


def invert(cfg: DictConfig) -> None:
    from stylevid.invert import run_invert

    _run(run_invert, cfg, "result.json")


def evaluate(cfg: DictConfig) -> None:
    from stylevid.evaluate import print_metrics_table, run_evaluate

    run_dir = _run(run_evaluate, cfg, "metrics.json")
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 holds the gathered table
        print_metrics_table(run_dir, Console())


def train(cfg: DictConfig) -> None:
    from stylevid.train import run_train

    _run(run_train, cfg, "result.json")


TASK_FUNCTIONS = {"generate": generate, "train": train, "invert": invert, "evaluate": evaluate}
