"""Checkpoints written atomically: into a temporary directory, then renamed; `last` is a symlink swapped by rename.

A crash at any moment leaves either the previous complete checkpoint or the new one, never a half-written
`last`: a directory is only ever seen under its final name once everything in it is on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..errors import UserInputError

STATE_FILE = "training_state.pt"
MOTION_DIR = "motion_module"


def save_checkpoint(checkpoints: Path, step: int, motion_adapter, state: dict, keep: int = 2) -> Path:
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step_{step:07d}"
    temporary = checkpoints / f".tmp_step_{step:07d}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    motion_adapter.save_pretrained(str(temporary / MOTION_DIR), safe_serialization=True)
    torch.save(state, temporary / STATE_FILE)
    for file in temporary.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    link = checkpoints / ".last.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(final.name)
    os.replace(link, checkpoints / "last")  # atomic swap of the symlink
    for old in sorted(checkpoints.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(motion module directory, training state) of a checkpoint directory or its `last` link."""
    path = Path(path).expanduser()
    if not (path / STATE_FILE).is_file() or not (path / MOTION_DIR).is_dir():
        raise UserInputError(f"trainer.resume={path} is not a checkpoint (no {STATE_FILE} and {MOTION_DIR}/)")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return path.resolve() / MOTION_DIR, state
