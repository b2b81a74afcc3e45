"""From a `condition` config to ControlNet guidance: read the input video, annotate it (or load ready-made
maps), load one ControlNet per condition kind, and hand the method a `Control`.

`condition=canny`, `condition=[depth,canny]`... fill `condition.controls.<kind>`; keys shared by all kinds
(`condition.video`, `condition.scale`, ...) sit beside it. With a single kind the short forms
`controlnet.path=`, `annotator.path=` and `condition.maps=` apply to it; with several they are an error
(which kind would they be for?), and each kind's own `condition.controls.<kind>.<key>=` is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..errors import UserInputError
from ..io.video_input import read_frames
from ..models.controlnet import load_controlnet
from .maps import CONDITION_KINDS, annotate, load_condition_maps, save_condition_maps


@dataclass
class Control:
    """ControlNet guidance: one ControlNet (or diffusers' MultiControlNetModel) and its per-frame maps."""

    controlnet: torch.nn.Module
    images: list[torch.Tensor]  # per ControlNet: (frames, 3, H, W) in [0, 1]
    scales: list[float]
    guidance_start: float = 0.0  # fraction of the schedule where the control starts / ends
    guidance_end: float = 1.0
    shared_noise: bool = True  # Text2Video-Zero's conditional mode: one x_T for all frames
    motion_field: bool = False  # instead: the motion-field procedure of the text-only mode

    def nets(self) -> list[torch.nn.Module]:
        """The ControlNet models (the members of a MultiControlNetModel), e.g. to install attention processors."""
        return list(getattr(self.controlnet, "nets", [self.controlnet]))

    def active_at(self, step: int, total: int) -> bool:
        """Whether step `step` of `total` lies in [guidance_start, guidance_end], as in diffusers."""
        return not (step / total < self.guidance_start or (step + 1) / total > self.guidance_end)


@dataclass
class ConditionMaps:
    kinds: list[str]
    maps: dict[str, np.ndarray]  # kind -> uint8 (frames, H, W, 3)
    annotated: list[str]  # kinds computed here (and so worth caching in the run directory)


# Single-condition short forms: (config key, the per-kind key it stands for, the kinds that have that key).
SHORT_FORMS = (
    ("condition.maps", "maps", CONDITION_KINDS),
    ("controlnet.path", "controlnet", CONDITION_KINDS),
    ("annotator.path", "annotator", ("depth", "pose")),
)


def _short_form(cfg, key: str):
    value = OmegaConf.select(cfg, key)
    return None if value in (None, "") else value


def _check_short_forms(cfg, kinds: list[str]) -> None:
    """With several kinds a short form would be silently ignored: say which per-kind keys to set instead."""
    if len(kinds) < 2:
        return
    for key, per_kind_key, takes_it in SHORT_FORMS:
        if _short_form(cfg, key) is not None:
            instead = ", ".join(f"condition.controls.{kind}.{per_kind_key}=" for kind in kinds if kind in takes_it)
            raise UserInputError(
                f"{key}= applies only to a single condition; with condition=[{','.join(kinds)}] set {instead} instead"
            )


def _per_kind(cfg, kind: str, key: str, short_form_key: str):
    """A setting for one kind: `condition.controls.<kind>.<key>`, else the single-condition short form."""
    value = cfg.condition.controls[kind].get(key)
    if value in (None, "", "default") and len(cfg.condition.controls) == 1:
        value = _short_form(cfg, short_form_key) or value
    return value


def _annotator_options(cfg, kind: str, device: torch.device, dtype: torch.dtype) -> dict:
    condition = cfg.condition
    if kind == "canny":
        return {"low_threshold": condition.get("low_threshold", 100), "high_threshold": condition.get("high_threshold", 200)}
    # The annotator runs where the generation runs. Half precision only on CUDA and only float16: on CPU it is
    # slow or unsupported, and bfloat16's 8-bit mantissa is as coarse as the 256 depth levels it must resolve.
    dtype = dtype if device.type == "cuda" and dtype == torch.float16 else torch.float32
    path = _per_kind(cfg, kind, "annotator", "annotator.path")
    if kind == "depth":
        if path == "tiny":
            from .depth import tiny_depth_annotator

            return {"annotator": tiny_depth_annotator(device=device)}
        options = {"device": device, "dtype": dtype}
        return {**options, "path": path} if path not in (None, "", "default") else options
    if kind == "pose":
        if path == "tiny":
            from .pose import tiny_pose_detector

            return {"detector": tiny_pose_detector(device=device)}
        options = {"min_confidence": condition.get("min_confidence", 0.3), "device": device, "dtype": dtype}
        return {**options, "path": path} if path not in (None, "", "default") else options
    raise UserInputError(f"unknown condition kind {kind!r}; choose from {', '.join(CONDITION_KINDS)}")


def prepare_condition_maps(
    cfg,
    frames: int,
    height: int,
    width: int,
    fps: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ConditionMaps | None:
    """The maps for every condition kind in `cfg.condition`, or None when there is no condition.

    Annotators (depth, pose) run on `device`, in `dtype` where that is safe (float16 on CUDA).
    """
    condition = cfg.condition
    kinds = list(condition.controls)
    if not kinds:
        if condition.get("video") or condition.get("maps"):
            raise UserInputError("condition.video/maps given but no condition kind: pass condition=pose|canny|depth")
        return None
    for kind in kinds:
        if kind not in CONDITION_KINDS:
            raise UserInputError(f"unknown condition kind {kind!r}; choose from {', '.join(CONDITION_KINDS)}")
    _check_short_forms(cfg, kinds)
    if not 0.0 <= float(condition.guidance_start) < float(condition.guidance_end) <= 1.0:
        raise UserInputError(
            f"need 0 <= condition.guidance_start < condition.guidance_end <= 1, got {condition.guidance_start}, {condition.guidance_end}"
        )
    device = torch.device(device)
    # start/stride/max_frames/fps pick frames of condition.video only. Maps (condition.maps, e.g. a cached
    # <run>/conditions/<kind>/ folder) are taken as they are, map i for output frame i: a cached folder
    # already holds the selected frames, and selecting again would shift them (start>0) or thin them (stride>1).
    selection = dict(
        start=int(condition.start),
        stride=int(condition.stride),
        max_frames=condition.get("max_frames"),  # checked by read_frames: null or an integer
        fps=float(fps) if condition.resample_fps else None,
    )

    maps: dict[str, np.ndarray] = {}
    annotated = []
    video_frames = None
    for kind in kinds:
        given = _per_kind(cfg, kind, "maps", "condition.maps")
        if given:
            maps[kind] = load_condition_maps(given, frames, height=height, width=width, fit=condition.get("maps_fit"),
                                             label=f"condition.maps ({kind})")
            continue
        if video_frames is None:
            if not condition.get("video"):
                raise UserInputError(f"condition={kind} needs an input: condition.video=<video or frame folder> or condition.maps=<maps>")
            video_frames = read_frames(condition.video, frames, height=height, width=width, fit=condition.fit,
                                       label="condition.video", **selection)
        maps[kind] = annotate(kind, video_frames, **_annotator_options(cfg, kind, device, dtype))
        annotated.append(kind)
    return ConditionMaps(kinds=kinds, maps=maps, annotated=annotated)


def cache_condition_maps(prepared: ConditionMaps, run_dir: Path) -> dict[str, str]:
    """Keep annotator outputs in `<run>/conditions/<kind>/`, reusable with `condition.maps=`."""
    return {kind: str(save_condition_maps(prepared.maps[kind], run_dir, kind)) for kind in prepared.annotated}


def check_controlnet_fits(controlnet, unet, vae_scale_factor: int, controlnet_name: str, model_name: str) -> None:
    """A ControlNet adds its residuals to the UNet's down and mid features and reads maps at the latent's
    resolution times the VAE's factor: any mismatch fails deep inside diffusers during sampling, so name both
    models here, before generating."""
    config, unet_config = controlnet.config, unet.config
    pairs = [
        ("block_out_channels", list(config.block_out_channels), list(unet_config.block_out_channels)),
        ("layers_per_block", config.layers_per_block, unet_config.layers_per_block),
        ("cross_attention_dim", config.cross_attention_dim, unet_config.cross_attention_dim),
        ("in_channels", config.in_channels, unet_config.in_channels),
        # the map embedding downsamples by 2 per block after the first; the VAE must downsample as much
        ("downsampling", 2 ** (len(config.conditioning_embedding_out_channels) - 1), vae_scale_factor),
    ]
    for field, theirs, ours in pairs:
        if theirs != ours:
            raise UserInputError(
                f"ControlNet {controlnet_name} does not fit model {model_name}: its {field} is {theirs}, the model's {ours} "
                "(a ControlNet must be trained for the model's base, e.g. SD 1.5)"
            )


def condition_scales(cfg, kinds: list[str]) -> list[float]:
    """Each kind's ControlNet conditioning scale: `condition.controls.<kind>.scale`, else `condition.scale`."""
    scales = []
    for kind in kinds:
        scale = cfg.condition.controls[kind].get("scale")
        scales.append(float(cfg.condition.scale if scale is None else scale))
    return scales


def build_control(cfg, prepared: ConditionMaps, unet, dtype: torch.dtype, device: torch.device,
                  vae_scale_factor: int = 8) -> Control:
    """One ControlNet per kind (diffusers' MultiControlNetModel for several) with the maps as tensors."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    condition = cfg.condition
    allow_pickle = bool(cfg.get("controlnet", {}).get("allow_pickle", False))
    nets, images = [], []
    for kind in prepared.kinds:
        path = _per_kind(cfg, kind, "controlnet", "controlnet.path")
        net = load_controlnet(path, kind, unet, dtype, allow_pickle=allow_pickle)
        model_name = cfg.model.get("path") or cfg.model.get("name")
        check_controlnet_fits(net, unet, vae_scale_factor, f"{path or 'default'} ({kind})", str(model_name))
        nets.append(net.to(device))
        images.append(torch.from_numpy(prepared.maps[kind]).permute(0, 3, 1, 2).float() / 255.0)
    return Control(
        controlnet=nets[0] if len(nets) == 1 else MultiControlNetModel(nets),
        images=images,
        scales=condition_scales(cfg, prepared.kinds),
        guidance_start=float(condition.guidance_start),
        guidance_end=float(condition.guidance_end),
        shared_noise=bool(condition.shared_noise),
        motion_field=bool(condition.motion_field),
    )
