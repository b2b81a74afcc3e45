"""Loading a Stable Diffusion pipeline from a preset, a hub id, a local diffusers directory or a single file.

The returned object is a diffusers `StableDiffusionPipeline`, used by the methods as a container of
components (UNet, VAE, text encoder, tokenizer, scheduler) and for its memory helpers (CPU offload).
"""

from __future__ import annotations

import functools

import torch
from diffusers import StableDiffusionPipeline

from ..errors import UserInputError
from .components import HUB_ID, load_component  # noqa: F401 - HUB_ID: kept importable from here
from .tiny import tiny_pipeline


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


def _single_file_loader(model_cfg, dtype: torch.dtype):
    """`from_single_file` with the pipeline's options; the file's content was checked by `load_component`."""
    kwargs = {"torch_dtype": dtype}
    if model_cfg.get("config"):
        # Single files carry weights only; diffusers takes the component configs from here (offline-safe
        # when it is a local diffusers directory).
        kwargs["config"] = str(model_cfg.config)
    return functools.partial(StableDiffusionPipeline.from_single_file, **kwargs)


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
    options = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if model_cfg.get("variant"):
        options["variant"] = model_cfg.variant
    return load_component(
        str(path),
        key="model.path",
        what="a diffusers pipeline",
        pretrained=StableDiffusionPipeline.from_pretrained,
        single_file=_single_file_loader(model_cfg, dtype),
        allow_pickle=bool(model_cfg.get("allow_pickle", False)),
        required_file="model_index.json",
        hint="<local diffusers directory or .safetensors file>",
        revision=model_cfg.get("revision"),
        **options,
    )
