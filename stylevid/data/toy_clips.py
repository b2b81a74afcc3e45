"""Toy-world clips rendered on the fly, as the video datasets give them (`data=toy`): VideoGen's toy build.

The toy world's 16-frame scenes (`toy_world`) are pure functions of time, so they can be rendered at any frame
rate: a clip here is `frames` frames `stride` sub-frames apart, where a sub-frame is 1/`subframes` of a toy frame
(8 by default: the flow network, the refiner and the video decoder train on 8x the frame rate of the cascade, as
the paper's high-frame-rate clips). Item i of epoch e is a function of (seed, e, i) only: a random scene, a random
start inside the clip, a random caption with optional parts dropped; frames are resized to `size` with area
averaging (the base stage trains at half the toy world's 64 px).

The items are those of `stylevid.data.videos.VideoClipDataset`: pixel_values (F, 3, size, size) in [-1, 1], caption,
fps (the toy world's `fps` per toy frame, times subframes / stride) and skipped (always 0: nothing is unreadable).
With `depth=True` (Gen-1's structure stages) an item also carries `depth`, float32 (F, size, size) in [0, 1], larger
is nearer: the toy world's ground-truth depth of the same frames, resized and flipped as they are, so a target needs
no depth estimator on toy data. `caption_colour=False` leaves the object's colour out of the captions (the toy image
prompts, where appearance must come from the image). `start="anywhere"` and `trail=False` take away the two cues by
which a toy clip's first frame tells its direction (where its object starts, its motion trail): probes of whether a
stage reads the direction word. `fixed` gives every scene the same attributes (`{"colour": "red", "shape": "circle"}`),
or draws an attribute among a list (`{"motion": ["left", "right", "up", "down"]}`): a simpler world, where a stage can
learn what varies before it meets the whole world. `mix` ({"share": 0.5, "fixed": {...}}) gives that simpler world to a
share of the scenes only, the rest being the whole world: a stage learns there what the whole world's diversity hides
from it (the VideoGen base learns the direction word on one look in 2,000 steps, across every look not in 6,000) and
carries it over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from ..errors import UserInputError
from ..sampling.vae import pixels_from_uint8
from . import toy_world

START_MODES = ("fit", "anywhere")
TOY_FPS = 8.0  # the rate a toy-world clip plays at, one toy frame per 1/8 s


class ToyClipDataset(Dataset):
    def __init__(self, count: int, frames: int, stride: int | list[int], size: int = toy_world.SIZE, seed: int = 0,
                 subframes: int = 8, flip: bool = False, depth: bool = False, caption_colour: bool = True,
                 trail: bool = True, start: str = "fit", fixed: dict | None = None, mix: dict | None = None):
        strides = [int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride])]
        if count < 1 or frames < 1 or subframes < 1 or any(s < 1 for s in strides):
            raise UserInputError("data=toy: data.count, data.frames, data.subframes and data.stride must be >= 1")
        longest = (frames - 1) * max(strides) / subframes
        if longest > toy_world.FRAMES - 1:
            raise UserInputError(
                f"data=toy: {frames} frames {max(strides)} sub-frames apart span {longest:g} toy frames; a toy clip has "
                f"{toy_world.FRAMES - 1} (lower data.frames or data.stride)"
            )
        self.fixed = scene_attributes(fixed, "data.fixed")
        mix = dict(mix or {})
        share = mix.get("share", 0.5)
        if mix and (set(mix) - {"share", "fixed"} or isinstance(share, bool) or not isinstance(share, (int, float))
                    or not 0 <= share <= 1 or not mix.get("fixed")):
            raise UserInputError(f"data=toy: data.mix takes a share in [0, 1] and the attributes that share of scenes has "
                                 f"(data.mix={{share:0.5,fixed:{{colour:red}}}}), got {mix!r}")
        self.mix_share = float(share) if mix else 0.0
        self.mix_fixed = scene_attributes(mix.get("fixed"), "data.mix.fixed")
        if start not in START_MODES:
            raise UserInputError(f"data=toy: data.start must be one of {', '.join(START_MODES)}, got {start!r}")
        if size % 8 or not 8 <= size <= toy_world.SIZE:
            raise UserInputError(f"data=toy: data.size must be a multiple of 8 up to {toy_world.SIZE}, got {size}")
        self.count, self.frames, self.strides, self.size = count, frames, strides, size
        self.seed, self.subframes, self.flip, self.depth = seed, subframes, flip, bool(depth)
        self.caption_colour, self.trail, self.start = bool(caption_colour), bool(trail), start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def clip(self, index: int) -> tuple[np.ndarray, toy_world.Scene, str, int]:
        """uint8 (F, size, size, 3) frames, the scene, its caption and the stride drawn for item `index`."""
        frames, _, scene, caption, stride = self.clip_with_depth(index)
        return frames, scene, caption, stride

    def clip_with_depth(self, index: int) -> tuple[np.ndarray, np.ndarray, toy_world.Scene, str, int]:
        """As `clip`, plus the frames' ground-truth depth, float32 (F, size, size) in [0, 1] (larger is nearer).

        The depth comes from the same `render_frame` calls as the images (no extra rendering), and takes the same
        area resize and flip, so depth and frame stay pixel-aligned. The random draws are those of `clip`: an item's
        frames do not depend on whether its depth is asked for."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        fixed = self.fixed
        if self.mix_share and rng.random() < self.mix_share:
            fixed = {**fixed, **self.mix_fixed}
        fixed = {key: value if isinstance(value, str) else value[int(rng.integers(len(value)))] for key, value in fixed.items()}
        scene = toy_world.random_scene(rng, **fixed)
        stride = self.strides[int(rng.integers(len(self.strides)))]
        span = (self.frames - 1) * stride / self.subframes
        start = float(rng.uniform(0, toy_world.FRAMES - 1 - span))
        if self.start == "anywhere":
            scene = placed_anywhere(scene, start, rng)
        background = toy_world.background_image(scene)
        times = [start + k * stride / self.subframes for k in range(self.frames)]
        rendered = [toy_world.render_frame(scene, t, toy_world.FRAMES, background, self.trail) for t in times]
        frames = np.stack([frame.image for frame in rendered])
        depth = np.stack([frame.depth for frame in rendered]).astype(np.float32)
        if self.size != toy_world.SIZE:
            resize = lambda image: cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)  # noqa: E731
            frames = np.stack([resize(f) for f in frames])
            depth = np.stack([resize(d) for d in depth])
        if self.flip and rng.random() < 0.5:  # off by default: a flip turns "moving right" into a wrong caption
            frames, depth = frames[:, :, ::-1], depth[:, :, ::-1]
        return frames, np.ascontiguousarray(depth), scene, scene.random_caption(rng, self.caption_colour), stride

    def __getitem__(self, index: int) -> dict:
        frames, depth, _, caption, stride = self.clip_with_depth(index)
        item = {"pixel_values": pixels_from_uint8(frames), "caption": caption,
                "fps": TOY_FPS * self.subframes / stride, "skipped": 0}
        if self.depth:
            item["depth"] = torch.from_numpy(depth)
        return item


def scene_attributes(fixed, name: str) -> dict[str, str | tuple[str, ...]]:
    """`fixed` checked against the toy world's scene attributes: each maps to one value or a list to draw among."""
    if fixed is None:
        return {}
    if not isinstance(fixed, Mapping):
        raise UserInputError(f"data=toy: {name} must map scene attributes to values ({name}={{colour:red}}), got {fixed!r}")
    choices, checked = toy_world.SCENE_CHOICES, {}
    for key, value in fixed.items():
        values = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Sequence) else (value,)
        if key not in choices or not values or any(v not in choices[key] for v in values):
            known = ", ".join(f"{attribute}: {'|'.join(options)}" for attribute, options in choices.items())
            raise UserInputError(f"data=toy: {name}.{key}={value!r} is not a toy scene attribute ({known})")
        checked[key] = values[0] if isinstance(value, str) else values
    return checked


def placed_anywhere(scene: toy_world.Scene, time: float, rng: np.random.Generator) -> toy_world.Scene:
    """The scene moved so that its object is, at `time`, anywhere in the frame (uniformly, fully inside), whatever
    its motion: it may then leave the frame. A toy scene starts where its whole path fits, so an object moving right
    starts on the left and the first frame alone tells its direction; placed anywhere, only the caption does."""
    x, y, _ = toy_world.object_state(scene, time)
    margin = toy_world.SIZES[scene.size] + 2
    new_x, new_y = rng.uniform(margin, toy_world.SIZE - margin, 2)
    return toy_world.with_attribute(scene, x=scene.x + float(new_x) - x, y=scene.y + float(new_y) - y)


def toy_clip_dataset(data, seed: int, depth: bool = False) -> ToyClipDataset:
    """`conf/data/toy.yaml` as a dataset (`depth`: items carry their ground-truth depth maps too)."""
    stride = data.stride
    stride = list(stride) if not isinstance(stride, (int, str)) else int(stride)
    plain = lambda value: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value  # noqa: E731
    return ToyClipDataset(count=int(data.count), frames=int(data.frames), stride=stride, size=int(data.size),
                          seed=seed, subframes=int(data.subframes), flip=bool(data.get("flip", False)), depth=depth,
                          caption_colour=bool(data.get("caption_colour", True)), trail=bool(data.get("trail", True)),
                          start=str(data.get("start", "fit")), fixed=plain(data.get("fixed")), mix=plain(data.get("mix")))

