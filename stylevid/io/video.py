"""Writing videos and frames."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image


def write_video(path: str | Path, frames: np.ndarray, fps: float, quality: int = 8) -> Path:
    """Write uint8 (F, H, W, 3) frames as an H.264 mp4 (yuv420p, so every player opens it)."""
    path = Path(path)
    _, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=quality, macro_block_size=8
    )
    writer.send(None)  # start the generator, as imageio-ffmpeg requires
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """One lossless uint8 (H, W, 3) image (PNG by the suffix)."""
    Image.fromarray(image).save(path)
    return Path(path)


def save_frames(directory: str | Path, frames: np.ndarray) -> list[Path]:
    """Lossless PNG frames `0000.png, 0001.png, ...`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(directory / f"{index:04d}.png")
        write_image(paths[-1], frame)
    return paths
