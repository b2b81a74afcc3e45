"""A toy video world for tests and benchmarks: small mp4s of coloured squares moving across noise, with captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.video import write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def write_toy_videos(folder: str | Path, count: int = 4, frames: int = 12, size: int = 32, seed: int = 0) -> list[Path]:
    """`count` videos `toy_NN.mp4` with sidecar captions `toy_NN.txt` ("a red square moving right")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        direction = list(DIRECTIONS)[(index // len(COLOURS)) % len(DIRECTIONS)]
        dx, dy = DIRECTIONS[direction]
        background = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        video = np.repeat(background[None], frames, axis=0)
        side = size // 4
        for t in range(frames):
            x = (size // 2 - side // 2 + dx * t * 2) % (size - side)
            y = (size // 2 - side // 2 + dy * t * 2) % (size - side)
            video[t, y : y + side, x : x + side] = COLOURS[colour]
        path = folder / f"toy_{index:02d}.mp4"
        write_video(path, video, fps=8)
        path.with_suffix(".txt").write_text(f"a {colour} square moving {direction}\n")
        paths.append(path)
    return paths
