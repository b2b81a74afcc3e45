"""Toy-world clips rendered on the fly, as the video datasets give them (`data=toy`): VideoGen's toy build.

The toy world's 16-frame scenes (`toy_world`) are pure functions of time, so they can be rendered at any frame
rate: a clip here is `frames` frames `stride` sub-frames apart, where a sub-frame is 1/`subframes` of a toy frame
(8 by default: the flow network, the refiner and the video decoder train on 8x the frame rate of the cascade, as
the paper's high-frame-rate clips). Item i of epoch e is a function of (seed, e, i) only: a random scene, a random
start inside the clip, a random caption with optional parts dropped; frames are resized to `size` with area
averaging (the base stage trains at half the toy world's 64 px).

The items are those of `stylevid.data.videos.VideoClipDataset`: pixel_values (F, 3, size, size) in [-1, 1], caption,
fps (the toy world's `fps` per toy frame, times subframes / stride) and skipped (always 0: nothing is unreadable).
"""

from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..errors import UserInputError
from ..sampling.vae import pixels_from_uint8
from . import toy_world

TOY_FPS = 8.0  # the rate a toy-world clip plays at, one toy frame per 1/8 s


class ToyClipDataset(Dataset):
    def __init__(self, count: int, frames: int, stride: int | list[int], size: int = toy_world.SIZE, seed: int = 0,
                 subframes: int = 8, flip: bool = False):
        strides = [int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride])]
        if count < 1 or frames < 1 or subframes < 1 or any(s < 1 for s in strides):
            raise UserInputError("data=toy: data.count, data.frames, data.subframes and data.stride must be >= 1")
        longest = (frames - 1) * max(strides) / subframes
        if longest > toy_world.FRAMES - 1:
            raise UserInputError(
                f"data=toy: {frames} frames {max(strides)} sub-frames apart span {longest:g} toy frames; a toy clip has "
                f"{toy_world.FRAMES - 1} (lower data.frames or data.stride)"
            )
        if size % 8 or not 8 <= size <= toy_world.SIZE:
            raise UserInputError(f"data=toy: data.size must be a multiple of 8 up to {toy_world.SIZE}, got {size}")
        self.count, self.frames, self.strides, self.size = count, frames, strides, size
        self.seed, self.subframes, self.flip = seed, subframes, flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def clip(self, index: int) -> tuple[np.ndarray, toy_world.Scene, str, int]:
        """uint8 (F, size, size, 3) frames, the scene, its caption and the stride drawn for item `index`."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = toy_world.random_scene(rng)
        stride = self.strides[int(rng.integers(len(self.strides)))]
        span = (self.frames - 1) * stride / self.subframes
        start = float(rng.uniform(0, toy_world.FRAMES - 1 - span))
        background = toy_world.background_image(scene)
        times = [start + k * stride / self.subframes for k in range(self.frames)]
        frames = np.stack([toy_world.render_frame(scene, t, toy_world.FRAMES, background).image for t in times])
        if self.size != toy_world.SIZE:
            frames = np.stack([cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_AREA) for f in frames])
        if self.flip and rng.random() < 0.5:  # off by default: a flip turns "moving right" into a wrong caption
            frames = frames[:, :, ::-1]
        return frames, scene, scene.random_caption(rng), stride

    def __getitem__(self, index: int) -> dict:
        frames, _, caption, stride = self.clip(index)
        return {"pixel_values": pixels_from_uint8(frames), "caption": caption,
                "fps": TOY_FPS * self.subframes / stride, "skipped": 0}


def toy_clip_dataset(data, seed: int) -> ToyClipDataset:
    """`conf/data/toy.yaml` as a dataset."""
    stride = data.stride
    stride = list(stride) if not isinstance(stride, (int, str)) else int(stride)
    return ToyClipDataset(count=int(data.count), frames=int(data.frames), stride=stride, size=int(data.size),
                          seed=seed, subframes=int(data.subframes), flip=bool(data.get("flip", False)))

