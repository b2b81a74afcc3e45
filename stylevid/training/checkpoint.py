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


# What a motion checkpoint depends on, recorded in its training state and compared on resume: the base UNet's
# geometry (another base cannot take these motion weights: diffusers' 47-line size-mismatch error) and the motion
# settings (heads and window change what the same-shaped weights compute).
UNET_ESSENTIALS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                   "norm_num_groups", "down_block_types", "up_block_types", "transformer_layers_per_block")
# MotionAdapter config key -> the train key that sets it
MOTION_ESSENTIALS = {
    "motion_num_attention_heads": "motion.num_attention_heads",
    "motion_max_seq_length": "motion.max_seq_length",
    "motion_transformer_layers_per_block": "motion.transformer_layers_per_block",
    "motion_transformer_layers_per_mid_block": "motion.transformer_layers_per_block",
    "motion_layers_per_block": "the base model's layers_per_block",
    "motion_norm_num_groups": "the base model's norm_num_groups",
    "block_out_channels": "the base model's block_out_channels",
    "use_motion_mid_block": "the motion module's mid block",
}
STATE_KEYS = ("global_step", "optimizer", "lr_scheduler", "scaler", "world_size", "batch_size", "grad_accum")


def _plain(value):
    """Config values as lists and scalars (tuples and lists compare equal; torch.load(weights_only) reads them)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def base_model_record(model_cfg, unet) -> dict:
    """Which base model a run trains on: its name, path (resolved when local) or seed, and its UNet's geometry."""
    path = model_cfg.get("path")
    if path and Path(str(path)).expanduser().exists():
        path = str(Path(str(path)).expanduser().resolve())
    record = {"name": model_cfg.get("name"), "path": str(path) if path else None,
              "unet": {key: _plain(unet.config.get(key)) for key in UNET_ESSENTIALS}}
    if model_cfg.get("name") == "tiny" and not path:
        record["seed"] = int(model_cfg.get("seed", 0))
    return record


def motion_record(adapter_config) -> dict:
    return {key: _plain(adapter_config.get(key)) for key in MOTION_ESSENTIALS}


def describe_model(record: dict) -> str:
    name = record.get("path") or record.get("name")
    return f"{name} (seed {record['seed']})" if record.get("seed") is not None else str(name)


def load_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(motion module directory, training state) of a checkpoint directory or its `last` link; anything else is one
    line naming what is wrong. The state loads with `weights_only=True`: no code from the file runs."""
    from ..models.weight_files import load_pickle_weights

    path = Path(str(path)).expanduser()
    if not path.exists():
        raise UserInputError(f"trainer.resume={path} does not exist")
    if not (path / STATE_FILE).is_file() or not (path / MOTION_DIR).is_dir():
        hint = f"; did you mean trainer.resume={path / 'checkpoints' / 'last'}?" if (path / "checkpoints" / "last").exists() else ""
        raise UserInputError(f"trainer.resume={path} is not a checkpoint (no {STATE_FILE} and {MOTION_DIR}/){hint}")
    state = load_pickle_weights(path / STATE_FILE, "trainer.resume")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing or not isinstance(state["global_step"], int) or state["global_step"] < 0:
        raise UserInputError(f"trainer.resume: {path / STATE_FILE} is not a stylevid training state "
                             f"({'no ' + ', '.join(missing) if missing else 'no step count'})")
    return path.resolve() / MOTION_DIR, state


def check_resume_step(path, state: dict, max_steps: int) -> None:
    """A resume must have steps left: otherwise it would write a finished run that trained nothing."""
    if max_steps <= state["global_step"]:
        raise UserInputError(
            f"trainer.resume={path} is at step {state['global_step']} and trainer.max_steps={max_steps}: nothing to train; "
            f"raise trainer.max_steps above {state['global_step']}"
        )
