"""Typed options for the metrics, built from the `metrics:` block of a Hydra config (or a plain dict).

Config keys (each error message names the one to set):

    metrics.device                         cpu | cuda | cuda:0 ...
    metrics.clip.model                     hub id or local CLIP directory (default openai/clip-vit-base-patch32)
    metrics.clip.batch_size                frames per CLIP forward pass
    metrics.clip.clamp                     clip_score clamping: mean | per_frame | none
    metrics.frame_consistency.pairs        consecutive (Gen-1) | all
    metrics.style.vgg_path                 VGG-19 features: TorchScript or torchvision-layout safetensors
    metrics.style.csd_path                 CSD style encoder: TorchScript
    metrics.flow.preset                    DIS preset: ultrafast | fast | medium
    metrics.fvd.i3d_path / stats_path ...  I3D TorchScript, cached real-set statistics (.npz)
    metrics.is.c3d_path / splits ...       C3D UCF-101 TorchScript
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stylevid.errors import UserInputError
from stylevid.values import integer, seed

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLAMP_POLICIES = ("mean", "per_frame", "none")
DIS_PRESETS = ("ultrafast", "fast", "medium")
VALUE_RANGES = ("-1,1", "0,1", "uint8")


@dataclass
class ClipConfig:
    model: str = DEFAULT_CLIP_MODEL
    batch_size: int = 32
    # torchmetrics' CLIPScore returns max(100 * mean cos, 0): the clamp is applied to the mean ("mean").
    # "per_frame" averages max(100 * cos, 0) per frame (the formula as written by Hessel et al.); "none" keeps
    # the sign. For real images and prompts cos > 0 and the three agree.
    clamp: str = "mean"


@dataclass
class FrameConsistencyConfig:
    pairs: str = "consecutive"  # Gen-1 Sec. 5: "all pairs of consecutive frames"; "all" = every i < j


@dataclass
class StyleConfig:
    vgg_path: str | None = None
    # torchvision vgg19().features indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (Gatys et al. 2016).
    vgg_layers: tuple[int, ...] = (1, 6, 11, 20, 29)
    csd_path: str | None = None
    csd_resolution: int = 224
    csd_output_index: int = -1  # the CSD model returns (features, content, style); style is the last


@dataclass
class FlowConfig:
    preset: str = "medium"


@dataclass
class FVDConfig:
    i3d_path: str | None = None
    stats_path: str | None = None  # .npz cache of the real set's (mu, sigma, num_videos)
    num_frames: int = 16
    resolution: int | None = 224  # shortest side resized then center-cropped; None passes frames as they are
    value_range: str = "-1,1"
    # i3d_torchscript.pt convention: model(videos, rescale=False, resize=False, return_features=True)
    call_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"rescale": False, "resize": False, "return_features": True}
    )
    batch_size: int = 8


@dataclass
class ISConfig:
    c3d_path: str | None = None
    num_frames: int = 16
    resolution: int | None = None  # the StyleGAN-V c3d_ucf101.pt resizes internally
    value_range: str = "uint8"
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    softmax: str = "auto"  # auto: apply softmax unless the rows already are probabilities; true | false
    splits: int = 10
    batch_size: int = 8
    shuffle_seed: int | None = 42  # StyleGAN-V shuffles predictions with RandomState(42) before splitting


@dataclass
class MetricsConfig:
    device: str = "cpu"
    clip: ClipConfig = field(default_factory=ClipConfig)
    frame_consistency: FrameConsistencyConfig = field(default_factory=FrameConsistencyConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    fvd: FVDConfig = field(default_factory=FVDConfig)
    is_: ISConfig = field(default_factory=ISConfig)  # config key "is" (a Python keyword)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MetricsConfig:
        """Build from a mapping (an OmegaConf DictConfig works); unknown keys are a user error.

        Keys starting with "_" (Hydra's `_target_`) and `names` (the list of metrics to run) are ignored.
        """
        if data is None:
            return cls()
        if isinstance(data, cls):
            return data
        data = _to_plain(data)
        sections = {
            "clip": ("clip", ClipConfig),
            "frame_consistency": ("frame_consistency", FrameConsistencyConfig),
            "style": ("style", StyleConfig),
            "flow": ("flow", FlowConfig),
            "fvd": ("fvd", FVDConfig),
            "is": ("is_", ISConfig),
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("_") or key == "names":
                continue
            if key == "device":
                kwargs["device"] = str(value)
            elif key in sections:
                field_name, section_cls = sections[key]
                kwargs[field_name] = _build_section(section_cls, value, f"metrics.{key}")
            else:
                raise UserInputError(f"unknown config key metrics.{key} (known: device, {', '.join(sections)})")
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every option, whether or not its metric runs, and turn numbers typed as text into numbers."""
        if self.clip.clamp not in CLAMP_POLICIES:
            raise UserInputError(f"metrics.clip.clamp={self.clip.clamp} is not one of {', '.join(CLAMP_POLICIES)}")
        self.clip.batch_size = integer(self.clip.batch_size, "metrics.clip.batch_size", minimum=1)
        if self.frame_consistency.pairs not in ("consecutive", "all"):
            raise UserInputError(
                f"metrics.frame_consistency.pairs={self.frame_consistency.pairs} is not consecutive or all"
            )
        style = self.style
        if isinstance(style.vgg_layers, (str, int)) or not style.vgg_layers:
            raise UserInputError(f"metrics.style.vgg_layers must be a list of layer indices, got {style.vgg_layers!r}")
        style.vgg_layers = tuple(integer(i, "metrics.style.vgg_layers", minimum=0) for i in style.vgg_layers)
        style.csd_resolution = integer(style.csd_resolution, "metrics.style.csd_resolution", minimum=1)
        style.csd_output_index = integer(style.csd_output_index, "metrics.style.csd_output_index")
        if self.flow.preset not in DIS_PRESETS:
            raise UserInputError(f"metrics.flow.preset={self.flow.preset} is not one of {', '.join(DIS_PRESETS)}")
        for key, section in (("fvd", self.fvd), ("is", self.is_)):
            if section.value_range not in VALUE_RANGES:
                raise UserInputError(
                    f"metrics.{key}.value_range={section.value_range} is not one of {', '.join(VALUE_RANGES)}"
                )
            section.num_frames = integer(section.num_frames, f"metrics.{key}.num_frames", minimum=1)
            section.batch_size = integer(section.batch_size, f"metrics.{key}.batch_size", minimum=1)
            if section.resolution is not None:
                section.resolution = integer(section.resolution, f"metrics.{key}.resolution", minimum=1)
            if not isinstance(section.call_kwargs, Mapping):
                raise UserInputError(
                    f"metrics.{key}.call_kwargs must be a mapping of keyword arguments, got {section.call_kwargs!r}"
                )
        if str(self.is_.softmax).lower() not in ("auto", "true", "false"):
            raise UserInputError(f"metrics.is.softmax={self.is_.softmax} is not auto, true or false")
        self.is_.splits = integer(self.is_.splits, "metrics.is.splits", minimum=1)
        if self.is_.shuffle_seed is not None:
            self.is_.shuffle_seed = seed(self.is_.shuffle_seed, "metrics.is.shuffle_seed")


def _build_section(section_cls, value, prefix: str):
    if value is None:
        return section_cls()
    if not isinstance(value, Mapping):
        raise UserInputError(f"{prefix} must be a mapping of options, got {value!r}")
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserInputError(f"unknown config key {prefix}.{unknown[0]} (known: {', '.join(sorted(known))})")
    return section_cls(**dict(value))  # values are checked and converted by MetricsConfig.validate


def _to_plain(data):
    """OmegaConf containers to plain dicts/lists, without importing omegaconf when not needed."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data, DictConfig):
            return OmegaConf.to_container(data, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency, but the library works without it
        pass
    return dict(data)
