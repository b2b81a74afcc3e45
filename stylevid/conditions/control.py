"""From a `condition` config to ControlNet guidance: read the input video, annotate it (or load ready-made
maps), load one ControlNet per condition kind, and hand the method a `Control`.

`condition=canny`, `condition=[depth,canny]`... fill `condition.controls.<kind>`; keys shared by all kinds
(`condition.video`, `condition.scale`, ...) sit beside it. With a single kind the short forms
`controlnet.path=`, `annotator.path=` and `condition.maps=` apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from ..io.video_input import read_frames
from ..methods.t2v_zero import Control
from ..models.controlnet import load_controlnet
from .maps import CONDITION_KINDS, annotate, load_condition_maps, save_condition_maps


@dataclass
class ConditionMaps:
    kinds: list[str]
    maps: dict[str, np.ndarray]  # kind -> uint8 (frames, H, W, 3)
    annotated: list[str]  # kinds computed here (and so worth caching in the run directory)


def _per_kind(cfg, kind: str, key: str, short_form):
    """A setting for one kind: `condition.controls.<kind>.<key>`, else the single-condition short form."""
    value = cfg.condition.controls[kind].get(key)
    if value in (None, "", "default") and short_form not in (None, "") and len(cfg.condition.controls) == 1:
        value = short_form
    return value


def _annotator_options(cfg, kind: str) -> dict:
    condition = cfg.condition
    if kind == "canny":
        return {"low_threshold": condition.get("low_threshold", 100), "high_threshold": condition.get("high_threshold", 200)}
    path = _per_kind(cfg, kind, "annotator", cfg.get("annotator", {}).get("path"))
    if kind == "depth":
        if path == "tiny":
            from .depth import tiny_depth_annotator

            return {"annotator": tiny_depth_annotator()}
        return {"path": path} if path not in (None, "", "default") else {}
    if kind == "pose":
        if path == "tiny":
            from .pose import tiny_pose_detector

            return {"detector": tiny_pose_detector()}
        options = {"min_confidence": condition.get("min_confidence", 0.3)}
        return {**options, "path": path} if path not in (None, "", "default") else options
    raise UserInputError(f"unknown condition kind {kind!r}; choose from {', '.join(CONDITION_KINDS)}")


def prepare_condition_maps(cfg, frames: int, height: int, width: int, fps: float) -> ConditionMaps | None:
    """The maps for every condition kind in `cfg.condition`, or None when there is no condition."""
    condition = cfg.condition
    kinds = list(condition.controls)
    if not kinds:
        if condition.get("video") or condition.get("maps"):
            raise UserInputError("condition.video/maps given but no condition kind: pass condition=pose|canny|depth")
        return None
    for kind in kinds:
        if kind not in CONDITION_KINDS:
            raise UserInputError(f"unknown condition kind {kind!r}; choose from {', '.join(CONDITION_KINDS)}")
    if not 0.0 <= float(condition.guidance_start) < float(condition.guidance_end) <= 1.0:
        raise UserInputError(
            f"need 0 <= condition.guidance_start < condition.guidance_end <= 1, got {condition.guidance_start}, {condition.guidance_end}"
        )
    selection = dict(start=int(condition.start), stride=int(condition.stride), fps=float(fps) if condition.resample_fps else None)

    maps: dict[str, np.ndarray] = {}
    annotated = []
    video_frames = None
    for kind in kinds:
        given = _per_kind(cfg, kind, "maps", condition.get("maps"))
        if given:
            maps[kind] = load_condition_maps(given, frames, height=height, width=width, fit=condition.get("maps_fit"),
                                             label=f"condition.maps ({kind})", **selection)
            continue
        if video_frames is None:
            if not condition.get("video"):
                raise UserInputError(f"condition={kind} needs an input: condition.video=<video or frame folder> or condition.maps=<maps>")
            video_frames = read_frames(condition.video, frames, height=height, width=width, fit=condition.fit,
                                       label="condition.video", **selection)
        maps[kind] = annotate(kind, video_frames, **_annotator_options(cfg, kind))
        annotated.append(kind)
    return ConditionMaps(kinds=kinds, maps=maps, annotated=annotated)


def cache_condition_maps(prepared: ConditionMaps, run_dir: Path) -> dict[str, str]:
    """Keep annotator outputs in `<run>/conditions/<kind>/`, reusable with `condition.maps=`."""
    return {kind: str(save_condition_maps(prepared.maps[kind], run_dir, kind)) for kind in prepared.annotated}


def build_control(cfg, prepared: ConditionMaps, unet, dtype: torch.dtype, device: torch.device) -> Control:
    """One ControlNet per kind (diffusers' MultiControlNetModel for several) with the maps as tensors."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    condition = cfg.condition
    short_path = cfg.get("controlnet", {}).get("path")
    allow_pickle = bool(cfg.get("controlnet", {}).get("allow_pickle", False))
    nets, images, scales = [], [], []
    for kind in prepared.kinds:
        path = _per_kind(cfg, kind, "controlnet", short_path)
        nets.append(load_controlnet(path, kind, unet, dtype, allow_pickle=allow_pickle).to(device))
        images.append(torch.from_numpy(prepared.maps[kind]).permute(0, 3, 1, 2).float() / 255.0)
        scale = condition.controls[kind].get("scale")
        scales.append(float(condition.scale if scale is None else scale))
    return Control(
        controlnet=nets[0] if len(nets) == 1 else MultiControlNetModel(nets),
        images=images,
        scales=scales,
        guidance_start=float(condition.guidance_start),
        guidance_end=float(condition.guidance_end),
        shared_noise=bool(condition.shared_noise),
        motion_field=bool(condition.motion_field),
    )
