"""What every generation method is to `stylevid generate`, and what the methods share.

A method is one module in `stylevid/methods/` (plus `conf/method/<name>.yaml`) defining a `VideoMethod`
subclass decorated with `@register`. The generate task (`stylevid/generate.py`: batches, torchrun sharding,
run directories, the record's common fields) only ever talks to this interface, so adding a method needs no
edit anywhere else. Third-party packages add methods through the `stylevid.methods` entry-point group (each
entry point names a module that registers its methods) and their configs through Hydra's search path or
`register(..., config=...)`.

The order of one video: `settings(cfg)` (every check that needs no model: one-line errors before anything is
loaded or written), `load(...)` once per run or batch (what all its videos share), `generate(...)` per video,
`record(...)` for the method's own fields of `result.json`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig

from .. import values
from ..errors import UserInputError
from ..progress import StageReporter

# Frame sides above this are refused before anything loads: at 4096 px an SD UNet's first self-attention already
# spans 262,144 tokens per frame, and larger sizes end in an allocation failure minutes later.
MAX_SIDE = 4096
# Stable Diffusion-class schedulers are trained on 1000 timesteps; sampling cannot take more steps than that
# (the model's own scheduler is checked again once it is loaded: `check_steps_fit`).
MAX_STEPS = 1000


@dataclass
class VideoSettings:
    """The settings every video has, whatever the method; a method's settings dataclass extends these."""

    prompt: str
    negative_prompt: str = ""
    frames: int = 8
    height: int = 512
    width: int = 512
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0


# What `guidance_scale: null` (conf/generate.yaml) samples with: Stable Diffusion's customary scale. The key is null
# rather than 7.5 so that a scale typed on the command line can be told from the default: method=gen1 weights may
# recommend their own scale, which the default gives way to and a typed one overrides.
DEFAULT_GUIDANCE_SCALE = 7.5


def default_guidance_scale(cfg) -> float:
    """The top-level guidance_scale, or DEFAULT_GUIDANCE_SCALE where it is null."""
    value = cfg.get("guidance_scale")
    return DEFAULT_GUIDANCE_SCALE if value is None else value


def common_settings(cfg: DictConfig) -> dict:
    """VideoSettings' fields from the composed config, each checked (one line naming the key)."""
    height = values.integer(cfg.height, "height", 8, MAX_SIDE)
    width = values.integer(cfg.width, "width", 8, MAX_SIDE)
    if height % 8 or width % 8:
        raise UserInputError(f"height and width must be multiples of 8, got {height}x{width}")
    return dict(
        prompt=str(cfg.prompt),
        negative_prompt=str(cfg.get("negative_prompt") or ""),
        frames=values.integer(cfg.frames, "frames", 1),
        height=height,
        width=width,
        steps=values.integer(cfg.steps, "steps", 1, MAX_STEPS),
        guidance_scale=values.number(default_guidance_scale(cfg), "guidance_scale", 0),
        seed=values.seed(cfg.seed),
    )


def check_steps_fit(steps: int, scheduler) -> None:
    trained = int(scheduler.config.num_train_timesteps)
    if steps > trained:
        raise UserInputError(f"steps={steps} is more than the model's scheduler was trained on ({trained} timesteps)")


@dataclass
class VideoOutput:
    frames: np.ndarray  # (F, H, W, 3) uint8
    latents: torch.Tensor  # (F, C, h, w) final latents
    timings: dict[str, float] = field(default_factory=dict)
    # What the video was made from besides text, as uint8 images (e.g. the style image as the model saw it):
    # shown beside the frames in preview.png.
    inputs: list[np.ndarray] = field(default_factory=list)
    # uint8 images the method made on the way, written into the run directory under these names (VideoGen's
    # reference image) and listed in result.json's files.
    files: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Feature:
    """Something a user switches on with a key of generate.yaml, which only some methods can carry."""

    keys: str  # how it is asked for, for messages
    requested: Callable[[DictConfig], bool]


def _set(value) -> bool:
    return value not in (None, "", False)


# A method declares which of these it supports (`VideoMethod.supports`); the task refuses the others from that
# declaration alone, before anything loads.
FEATURES = {
    "style": Feature("style=", lambda cfg: _set(cfg.get("style"))),
    "style_prompt": Feature("style_prompt=", lambda cfg: _set(cfg.get("style_prompt"))),
    "condition": Feature("condition=", lambda cfg: bool(cfg.condition.get("controls"))),
    # Text2Video-Zero's options for conditioned videos (its motion-field procedure, or noise per frame)
    "condition_motion_field": Feature("condition.motion_field=true", lambda cfg: bool(cfg.condition.get("motion_field"))),
    "condition_noise_per_frame": Feature("condition.shared_noise=false", lambda cfg: cfg.condition.get("shared_noise") is False),
    "cpu_offload": Feature("cpu_offload=true", lambda cfg: bool(cfg.get("cpu_offload"))),
    "vae_slicing": Feature("vae_slicing=true", lambda cfg: bool(cfg.get("vae_slicing"))),
}


class VideoMethod:
    """One generation method. Subclasses set `name`, `description` and `supports`, and implement the four steps."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, shown by `stylevid --help`
    supports: ClassVar[frozenset[str]] = frozenset()  # keys of FEATURES
    example: ClassVar[str] = ""  # the overrides of one typical command, shown by `stylevid --help`
    needs_prompt: ClassVar[bool] = True  # False: the method works from an input alone (method=tsr)

    def settings(self, cfg: DictConfig) -> VideoSettings:
        """The method's settings from the composed config: every check that needs no model happens here."""
        raise NotImplementedError

    def load(self, cfg: DictConfig, settings: VideoSettings, device: torch.device, dtype: torch.dtype, conditions) -> object:
        """What every video of the run shares (pipeline, ControlNets...), on `device`. `conditions` is the
        prepared `ConditionMaps` when the user gave `condition=` (only for methods that support it), else None."""
        raise NotImplementedError

    def generate(self, loaded: object, settings: VideoSettings, reporter: StageReporter) -> VideoOutput:
        raise NotImplementedError

    def record(self, cfg: DictConfig, settings: VideoSettings) -> dict:
        """The method's own fields of result.json (the common ones are written by the task)."""
        return {}

    def output_fps(self, cfg: DictConfig, settings: VideoSettings) -> float | None:
        """The frame rate the method's output has when `fps=` is not given (None: the task decides)."""
        return None


_REGISTRY: dict[str, VideoMethod] = {}
_DISCOVERED = False


def register(cls: type[VideoMethod] | None = None, *, config: dict | None = None):
    """Class decorator adding a method to the registry (`@register`, or `@register(config={...})`).

    `config` is the method's `conf/method/<name>.yaml` as a dict, stored in Hydra's ConfigStore: for a method
    defined outside the package (a plugin, a test) that ships no yaml file.
    """

    def add(method_cls: type[VideoMethod]) -> type[VideoMethod]:
        for attribute in ("name", "description"):
            if not getattr(method_cls, attribute, None):
                raise TypeError(f"{method_cls.__name__} must set `{attribute}` to be registered")
        unknown = set(method_cls.supports) - set(FEATURES)
        if unknown:
            raise TypeError(f"{method_cls.__name__}.supports names unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
        _REGISTRY[method_cls.name] = method_cls()
        if config is not None:
            from hydra.core.config_store import ConfigStore

            ConfigStore.instance().store(group="method", name=method_cls.name, node={"name": method_cls.name, **config})
        return method_cls

    return add(cls) if cls is not None else add


def unregister(name: str) -> None:
    """Remove a method (and its stored config), e.g. a test's throwaway one."""
    _REGISTRY.pop(name, None)
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().repo.get("method", {}).pop(f"{name}.yaml", None)


def _discover() -> None:
    """Import every module of this package, and every `stylevid.methods` entry point, once: each registers its
    methods as it is imported."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    for entry in entry_points(group="stylevid.methods"):
        entry.load()


def registered_methods() -> dict[str, VideoMethod]:
    """Every method, by name, in registration order."""
    _discover()
    return dict(_REGISTRY)


def get_method(name: str) -> VideoMethod:
    methods = registered_methods()
    if name not in methods:
        raise UserInputError(f"unknown method {name!r}; choose one of {', '.join(methods)}")
    return methods[name]


def methods_supporting(feature: str) -> list[str]:
    return sorted(name for name, method in registered_methods().items() if feature in method.supports)


def load_image_pipeline(cfg: DictConfig, settings: VideoSettings, dtype: torch.dtype):
    """The Stable Diffusion-class pipeline `model=` names (hub id, directory, single file, tiny, toy), checked
    against the requested number of steps. Left on the CPU: `place` puts it where it runs."""
    from ..models.loading import load_pipeline

    pipe = load_pipeline(cfg.model, dtype)
    check_steps_fit(settings.steps, pipe.scheduler)
    return pipe


def place(pipe, cfg: DictConfig, device: torch.device):
    """The pipeline on `device`, or with `cpu_offload=true` on CUDA, diffusers' model CPU offload (each model
    moves to the GPU only while it runs). On the CPU there is nothing to offload to, so the key is a no-op."""
    if cfg.get("cpu_offload") and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe
