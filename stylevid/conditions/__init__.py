"""Structure conditions for ControlNet: canny edges, depth and OpenPose skeletons.

  canny.py  OpenCV Canny maps
  depth.py  depth maps from a transformers depth-estimation model, normalised once per clip
  pose.py   OpenPose-style skeleton rendering and keypoint detectors
  maps.py   loading precomputed maps, saving annotator outputs, the `annotate(kind, frames)` dispatcher

Modules are imported on use, so `import stylevid.conditions` stays cheap (no transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stylevid.errors import UserInputError

Loaded = TypeVar("Loaded")


def load_annotator_weights(load: Callable[..., Loaded], path: str, *, what: str, option: str, **kwargs) -> Loaded:
    """`load(path, **kwargs)` (a transformers `from_pretrained`), with a one-line error naming `option` on failure.

    Offline, or with a mistyped id or folder, transformers raises a long OSError; the user needs to
    know which setting to change instead.
    """
    local = Path(path).expanduser()
    looks_local = local.is_absolute() or str(path).startswith((".", "~"))
    if looks_local and not local.exists():
        raise UserInputError(f"{what} {path}: no such folder; pass {option}=<local folder or hub id>")
    try:
        return load(str(local) if local.exists() else path, **kwargs)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(
            f"{what} {path!r} could not be loaded ({first_line}); pass {option}=<local folder or hub id>"
        ) from None
