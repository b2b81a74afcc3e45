"""Helpers the metrics share: input checks, offline-aware weight resolution, TorchScript loading.

Weights for every metric come from a local path or a Hugging Face hub reference; nothing is downloaded when
HF_HUB_OFFLINE=1, and a missing file is a one-line `UserInputError` naming the config key to pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from stylevid.errors import UserInputError
from stylevid.models.components import download_hub_file, hub_offline  # noqa: F401 - hub_offline: kept importable here

# "owner/repo:path/in/repo.pt" names one file of a hub repository (for TorchScript / safetensors weights).
_HUB_FILE = re.compile(r"^[\w.-]+/[\w.-]+:.+$")


def looks_like_local_path(value: str) -> bool:
    """A string meant as a filesystem path rather than a hub id ("owner/name" has exactly one slash)."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value


def resolve_weights_file(value: str | os.PathLike | None, key: str, what: str) -> Path:
    """Return a local file for `value`: an existing path, or `owner/repo:file` fetched through the hub cache.

    `key` is the config key the user should set (e.g. "metrics.fvd.i3d_path"); it appears in every error.
    """
    if value is None or str(value).strip() in {"", "None", "null", "???"}:
        raise UserInputError(f"{what} needs local weights: pass {key}=<path to the file>")
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserInputError(f"{what}: {text} is a directory, not a weights file; pass {key}=<path to the file>")
    if _HUB_FILE.match(text) and not path.exists():
        return download_hub_file(text, key=key, hint="<local path>")  # the components' hub messages
    raise UserInputError(f"{what}: file not found: {text}; pass {key}=<path to the file>")


def load_torchscript(value, key: str, what: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript network (I3D, C3D, CSD, a VGG feature extractor) from a local path or hub file."""
    path = resolve_weights_file(value, key, what)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise UserInputError(f"{what}: {path} is not a TorchScript file ({reason}); check {key}=") from None
    return module.eval()


def check_video(frames, name: str = "frames") -> np.ndarray:
    """Frames must be uint8 [T, H, W, 3] (what stylevid.io reads); anything else is a user error."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise UserInputError(f"{name} must be a uint8 array [T, H, W, 3], got shape {shape}")
    if frames.dtype != np.uint8:
        raise UserInputError(f"{name} must be uint8 in [0, 255], got dtype {frames.dtype}")
    if frames.shape[0] < 1:
        raise UserInputError(f"{name} has no frames")
    return frames


def check_image(image, name: str = "style_image") -> np.ndarray:
    """An image must be uint8 [H, W, 3]."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise UserInputError(f"{name} must be a uint8 array [H, W, 3], got shape {shape} dtype {dtype}")
    return image


def to_unit_float(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] to float32 [0, 1], the intensity scale warp error and flicker are reported in."""
    return frames.astype(np.float32) / 255.0
