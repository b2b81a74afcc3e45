"""Run directories: one per run, never overwritten, `result.json` written last so it marks a finished run."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

from ..errors import UserInputError

RESULT_FILE = "result.json"


def default_run_dir(root: str | Path, task: str, name: str, now: datetime | None = None) -> Path:
    """`<root>/<task>/<date>/<time>_<name>`, with `_2`, `_3`... when two runs start in the same second."""
    check_writable(root, "outputs_root")
    now = now or datetime.now()
    base = Path(root) / task / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{name}"
    candidate, counter = base, 1
    while candidate.exists():
        counter += 1
        candidate = base.with_name(f"{base.name}_{counter}")
    return candidate


# Files a stylevid run writes before its result.json: a directory holding one of them and no result.json is
# a run that was killed (SIGKILL, power loss) before it finished.
RUN_MARKERS = ("config.yaml", "video.mp4", "checkpoints", "metrics.jsonl", "0000", "conditions", "latents")


def check_writable(path: str | Path, label: str = "output_dir") -> None:
    """The nearest existing folder at or above `path` must be writable, so a run is refused at the start
    instead of failing with a PermissionError after minutes of work."""
    existing = Path(path).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserInputError(f"{label} {path}: {existing} is a file, not a directory")
    # Try it rather than ask os.access, which says yes to root even on a read-only mount.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".stylevid-write-check-", dir=existing))
    except OSError as error:
        raise UserInputError(f"{label} {path}: cannot write in {existing} ({error.strerror or error})") from None


def check_output_dir(path: str | Path) -> Path:
    """An explicit `output_dir=`: used exactly, but never one that holds a finished run or other files."""
    path = Path(path)
    if (path / RESULT_FILE).exists():
        raise UserInputError(f"output_dir {path} already holds a finished run; choose another directory")
    if path.exists() and not path.is_dir():
        raise UserInputError(f"output_dir {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if (path / "checkpoints").is_dir():
            raise UserInputError(
                f"output_dir {path} holds an unfinished training run (no {RESULT_FILE}): continue it with "
                f"trainer.resume={path / 'checkpoints' / 'last'} and a new output_dir, or delete the directory"
            )
        if (path / "batch_plan.json").exists():
            raise UserInputError(
                f"output_dir {path} holds an unfinished batch (no batch.json): run the same command with "
                f"output_dir={path} to make the missing rows, or delete it"
            )
        if any((path / marker).exists() for marker in RUN_MARKERS):
            raise UserInputError(
                f"output_dir {path} holds an unfinished run (no {RESULT_FILE}; it was stopped before it finished): "
                f"delete it (rm -r {path}) to run there again, or choose another directory"
            )
        raise UserInputError(f"output_dir {path} is not empty; choose a new or empty directory")
    check_writable(path)
    return path


@contextmanager
def run_directory(path: Path) -> Iterator[Path]:
    """Create `path` for a run; if the run fails, remove what it wrote so nothing half-written is left."""
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if not (path / RESULT_FILE).exists():
            if existed:  # an empty directory the user (or Hydra's multirun) made: empty it, keep it
                for child in path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: allocated CUDA memory on a GPU, resident set size on the CPU (MiB)."""
    record = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        record["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    import stylevid

    record = {
        "stylevid": stylevid.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    try:
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        if commit:
            record["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    record["command"] = " ".join(sys.argv)
    return record
