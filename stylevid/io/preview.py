"""`preview.png`: a strip of a run's frames beside the images it was made from, to look at instead of read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PREVIEW_FRAMES = 8  # at most this many frames, evenly spaced from the first to the last
GAP = 4  # pixels of white between the tiles


def preview_indices(frames: int, most: int = PREVIEW_FRAMES) -> list[int]:
    """Evenly spaced frame indices, first and last included (all of them for a short video)."""
    if frames <= most:
        return list(range(frames))
    return [round(i * (frames - 1) / (most - 1)) for i in range(most)]


def write_preview(path: str | Path, frames: np.ndarray, beside: list[np.ndarray] = ()) -> Path:
    """The inputs (`beside`: a style image, a reference image, condition maps; uint8 (H, W, 3), scaled to the
    frames' height), then the frames, left to right, on white."""
    path = Path(path)
    height = frames.shape[1]
    tiles = [_to_height(image, height) for image in beside]
    tiles += [frames[i] for i in preview_indices(len(frames))]
    width = sum(tile.shape[1] for tile in tiles) + GAP * (len(tiles) - 1)
    if beside:
        width += GAP  # a double gap sets the inputs apart from the video
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for index, tile in enumerate(tiles):
        strip[:, x : x + tile.shape[1]] = tile
        x += tile.shape[1] + GAP + (GAP if index == len(beside) - 1 else 0)
    Image.fromarray(strip).save(path)
    return path


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image[..., :3]).resize((width, height), Image.BICUBIC))
