"""Loading a Stable Diffusion pipeline from a preset, a hub id, a local diffusers directory or a single file.

The returned object is a diffusers `StableDiffusionPipeline`, used by the methods as a container of
components (UNet, VAE, text encoder, tokenizer, scheduler) and for its memory helpers (CPU offload).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from ..errors import UserInputError
from .tiny import tiny_pipeline
from .weight_files import check_single_file

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"device {device!r} is not a torch device (use auto, cpu, cuda, cuda:1...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={device} asked for, but this torch has no CUDA device; use device=cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in choices:
        raise UserInputError(f"dtype must be one of auto, {', '.join(choices)}; got {dtype!r}")
    return choices[dtype]


def _from_single_file(path: Path, model_cfg, dtype: torch.dtype) -> StableDiffusionPipeline:
    check_single_file(path, "model.path", bool(model_cfg.get("allow_pickle", False)))  # by content: a name can mislead
    kwargs = {"torch_dtype": dtype}
    if model_cfg.get("config"):
        # Single files carry weights only; diffusers takes the component configs from here (offline-safe
        # when it is a local diffusers directory).
        kwargs["config"] = str(model_cfg.config)
    return StableDiffusionPipeline.from_single_file(str(path), **kwargs)


def load_pipeline(model_cfg, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Load the pipeline a `model` config names; a user-visible failure raises `UserInputError`."""
    path = model_cfg.get("path")
    name = model_cfg.get("name", "custom")
    if name == "tiny" and not path:
        pipe = tiny_pipeline(seed=int(model_cfg.get("seed", 0)))
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if name == "toy" and not path:
        from ..toy import toy_path

        path = toy_path("pipeline")
    if not path:
        raise UserInputError(f"model={name} names no weights; pass model.path=<hub id, diffusers directory or .safetensors>")
    path = str(path)
    local = Path(path).expanduser()
    common = {"safety_checker": None, "requires_safety_checker": False}
    try:
        if local.is_dir():
            if not (local / "model_index.json").exists():
                raise UserInputError(f"model.path {local} is a directory but not a diffusers pipeline (no model_index.json)")
            return StableDiffusionPipeline.from_pretrained(str(local), torch_dtype=dtype, local_files_only=True, **common)
        if local.is_file():
            return _from_single_file(local, model_cfg, dtype)
        if path.startswith((".", "/", "~")) or not HUB_ID.match(path):
            raise UserInputError(f"model.path {path} does not exist")
        return StableDiffusionPipeline.from_pretrained(
            path, torch_dtype=dtype, revision=model_cfg.get("revision"), variant=model_cfg.get("variant"), **common
        )
    except UserInputError:
        raise
    except (OSError, ValueError, EnvironmentError) as error:
        # huggingface_hub's offline / not-found errors are OSError subclasses; diffusers raises ValueError
        # for files it cannot interpret. Either way the user has to point at other weights.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise UserInputError(
            f"model {name} ({path}) could not be loaded: {reason[:200]} — offline, pass model.path=<local diffusers "
            "directory or .safetensors file>"
        ) from None
