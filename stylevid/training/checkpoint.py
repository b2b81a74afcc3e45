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
WEIGHTS_DIR = "weights"  # the target's weights, in its ecosystem format (a MotionAdapter directory, a LoRA file...)
LEGACY_WEIGHTS_DIRS = ("motion_module",)  # checkpoints of the motion trainer before the one loop


def save_checkpoint(checkpoints: Path, step: int, write_weights, state: dict, keep: int = 2) -> Path:
    """`write_weights(directory)` writes the target's weights; `state` (optimizer, schedule, step...) goes beside."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step_{step:07d}"
    temporary = checkpoints / f".tmp_step_{step:07d}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    (temporary / WEIGHTS_DIR).mkdir()
    write_weights(temporary / WEIGHTS_DIR)
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


# What weights trained on a base model depend on, recorded in a checkpoint and compared on resume: the base UNet's
# geometry (another base cannot take them: diffusers' 47-line size-mismatch error) and which model it was.
UNET_ESSENTIALS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                   "norm_num_groups", "down_block_types", "up_block_types", "transformer_layers_per_block")


def plain(value):
    """Config values as lists and scalars (tuples and lists compare equal; torch.load(weights_only) reads them)."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def model_identity(model_cfg) -> dict:
    """Which base model `model_cfg` names: its name, path (resolved when local, so a relative and an absolute path to
    one directory are the same model) or, for the in-memory tiny model, its seed."""
    path = model_cfg.get("path")
    if path and Path(str(path)).expanduser().exists():
        path = packaged_name(Path(str(path)).expanduser().resolve())
    record = {"name": model_cfg.get("name"), "path": str(path) if path else None}
    if model_cfg.get("name") == "tiny" and not path:
        record["seed"] = int(model_cfg.get("seed", 0))
    return record


def packaged_name(path: Path) -> str:
    """`path`, or for the packaged toy weights their name inside the repository (stylevid/toy/weights/...), as the
    shipped toy models record their base model: a record made on the build machine then names the same model on
    every other one (continuing the shipped toy Gen-1 or image prompts with `gen1.init=`, `target.init=`)."""
    from ..toy import WEIGHTS

    packaged = WEIGHTS.resolve()
    if path == packaged or packaged in path.parents:
        return str(path.relative_to(packaged.parents[2]))
    return str(path)


def base_model_record(model_cfg, unet) -> dict:
    """Which base model a run trains on (`model_identity`) and its UNet's geometry."""
    return {**model_identity(model_cfg), "unet": {key: plain(unet.config.get(key)) for key in UNET_ESSENTIALS}}


# What `model=toy` (no model.path) loads, by the name `packaged_name` gives it: a run on model=toy and a record made
# with model.path=<the packaged pipeline> (the toy build's) are runs on one model.
TOY_PIPELINE = "stylevid/toy/weights/pipeline"


def describe_model(record: dict) -> str:
    name = record.get("path") or (TOY_PIPELINE if record.get("name") == "toy" else record.get("name"))
    return f"{name} (seed {record['seed']})" if record.get("seed") is not None else str(name)


def check_same_base(path, recorded: dict | None, here: dict, start_anew: str) -> None:
    """A resume continues the same run: a checkpoint trained on another base model (another geometry cannot take the
    weights; another model of the same geometry would not continue the run) is refused, naming `start_anew`, the
    key that starts a new run from the checkpoint's weights."""
    if recorded is None:
        return
    differs = [key for key in UNET_ESSENTIALS if recorded["unet"].get(key) != here["unet"].get(key)]
    if differs or describe_model(recorded) != describe_model(here):
        detail = (f" ({differs[0]}={recorded['unet'].get(differs[0])} there, {here['unet'].get(differs[0])} here)"
                  if differs else "")
        raise UserInputError(
            f"trainer.resume={path} was trained on base model {describe_model(recorded)}, this run's model is "
            f"{describe_model(here)}{detail}; resume with that model, or start a new run from its weights with {start_anew}"
        )


STATE_KEYS = ("global_step", "optimizer", "lr_scheduler", "scaler", "world_size", "batch_size", "grad_accum")


def load_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(weights directory, training state) of a checkpoint directory or its `last` link; anything else is one line
    naming what is wrong. The state loads with `weights_only=True`: no code from the file runs."""
    from ..models.weight_files import load_pickle_weights

    path = Path(str(path)).expanduser()
    if not path.exists():
        raise UserInputError(f"trainer.resume={path} does not exist")
    weights = next((path / name for name in (WEIGHTS_DIR, *LEGACY_WEIGHTS_DIRS) if (path / name).is_dir()), None)
    if not (path / STATE_FILE).is_file() or weights is None:
        hint = f"; did you mean trainer.resume={path / 'checkpoints' / 'last'}?" if (path / "checkpoints" / "last").exists() else ""
        raise UserInputError(f"trainer.resume={path} is not a checkpoint (no {STATE_FILE} and {WEIGHTS_DIR}/){hint}")
    state = load_pickle_weights(path / STATE_FILE, "trainer.resume")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing or not isinstance(state["global_step"], int) or state["global_step"] < 0:
        raise UserInputError(f"trainer.resume: {path / STATE_FILE} is not a stylevid training state "
                             f"({'no ' + ', '.join(missing) if missing else 'no step count'})")
    return weights.resolve(), state


def check_resume_step(path, state: dict, max_steps: int) -> None:
    """A resume must have steps left: otherwise it would write a finished run that trained nothing."""
    if max_steps <= state["global_step"]:
        raise UserInputError(
            f"trainer.resume={path} is at step {state['global_step']} and trainer.max_steps={max_steps}: nothing to train; "
            f"raise trainer.max_steps above {state['global_step']}"
        )
