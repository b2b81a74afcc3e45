"""Condition maps: making them (`annotate`), saving them with a run, and loading them back.

A run that annotates its input saves the maps as `<run>/conditions/<kind>/0000.png, 0001.png, ...`
(PNG, so canny's 0/255 edges come back exactly); passing that folder as `condition.maps=` to a
later run skips the annotator. Maps made elsewhere load the same way, from a folder or a video.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from stylevid.errors import UserInputError
from stylevid.io.video_input import read_frames

logger = logging.getLogger(__name__)

CONDITION_KINDS = ("canny", "depth", "pose")


def annotate(kind: str, frames: Iterable[np.ndarray], **options) -> np.ndarray:
    """Condition maps of `kind` (canny, depth or pose) for a clip: uint8 (N, H, W, 3).

    `options` go to the kind's function: canny_maps (low_threshold, high_threshold), depth_maps
    (annotator, path, device, batch_size) or pose_maps (detector, path, device, min_confidence,
    limb_width, joint_radius). An option the kind does not take is a user error, not ignored.
    """
    annotators = _annotators()
    if kind not in annotators:
        raise UserInputError(f"condition kind {kind!r} is not one of {', '.join(CONDITION_KINDS)}")
    make_maps = annotators[kind]
    accepted = [name for name in inspect.signature(make_maps).parameters if name != "frames"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserInputError(f"{kind} annotator does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return make_maps(list(frames), **options)


def _annotators() -> dict:
    # Imported here so that canny-only use never imports transformers.
    from stylevid.conditions.canny import canny_maps
    from stylevid.conditions.depth import depth_maps
    from stylevid.conditions.pose import pose_maps

    return {"canny": canny_maps, "depth": depth_maps, "pose": pose_maps}


def save_condition_maps(maps: Iterable[np.ndarray], run_dir: str | Path, kind: str) -> Path:
    """Write maps as `<run_dir>/conditions/<kind>/0000.png...`; returns that folder.

    Refuses a folder that already holds files: a run's outputs are never overwritten.
    """
    if not kind or Path(kind).name != kind:
        raise ValueError(f"kind must be a plain folder name, got {kind!r}")
    folder = Path(run_dir) / "conditions" / kind
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already holds condition maps; not overwriting them")
    folder.mkdir(parents=True, exist_ok=True)
    for index, condition_map in enumerate(maps):
        file = folder / f"{index:04d}.png"
        if not cv2.imwrite(str(file), cv2.cvtColor(np.asarray(condition_map), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {file}")
    return folder


def load_condition_maps(
    path: str | Path,
    num_frames: int,
    *,
    height: int,
    width: int,
    start: int = 0,
    stride: int = 1,
    fps: float | None = None,
    source_fps: float | None = None,
    fit: str | None = None,
    label: str = "condition.maps",
) -> np.ndarray:
    """Precomputed maps from a folder or video: uint8 (num_frames, height, width, 3).

    Frames are chosen as for an input video (start, stride, fps; see stylevid.io.video_input); the
    first `num_frames` of them are used, and fewer is a `UserInputError` giving both counts.
    By default (fit=None) the maps must already be height x width: resizing turns canny's 0/255
    edges and the skeleton's flat colours into blur, so a size mismatch is a `UserInputError`
    giving both sizes. fit="crop" or "pad" resizes them exactly as an input video would be.
    """
    selection = dict(start=start, stride=stride, fps=fps, source_fps=source_fps, label=label)
    if fit is not None:
        return read_frames(path, num_frames, height=height, width=width, fit=fit, **selection)

    maps = read_frames(path, num_frames, **selection)
    found_height, found_width = maps.shape[1:3]
    if (found_height, found_width) != (height, width):
        raise UserInputError(
            f"{label} {path} maps are {found_height}x{found_width} (height x width); generation asks for "
            f"{height}x{width} (maps are not resized unless asked, since resizing blurs edges and skeletons)"
        )
    return maps
