"""Reading input videos and frame folders as a stream of RGB frames at the generation size.

Sources:
  * a video file (.mp4, .webm, .mov, .mkv, .avi), decoded with decord;
  * a GIF, decoded with Pillow (decord cannot measure a GIF's length: "broken metadata");
  * a folder of frames (.png, .jpg, .jpeg, .webp), in natural order (2.png before 10.png).

Which frames: `start` is an index into the source's frames; from there every `stride`-th frame is
taken, at most `max_frames` of them. With `fps=`, frames are first picked by timestamp so that the
output runs at `fps` (a 24 fps video read at fps=8 gives every 3rd frame), and `stride` then steps
over those resampled frames. Resampling needs the source's timing: a video's own timestamps, a GIF's
frame durations, or `source_fps=` for a folder (a folder has no timing of its own); without it the
frames are taken as they are.

Geometry, handled explicitly rather than by stretching:
  * fit="crop" (default): scale so that the frame covers height x width (the short side, relative to
    the target's aspect, fills it), then cut the centre; what sticks out on the long side is lost.
  * fit="pad": scale so that the whole frame fits inside height x width, then centre it on black.
height and width must be multiples of 8 (the VAE downsamples by 8). Leaving both out returns frames
at their stored size.

Frames are yielded one at a time (decoded in small batches), as uint8 (H, W, 3) RGB arrays, so a long
video is never held in memory at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stylevid.errors import UserInputError

from .images import decode_image, image_size
from .native_output import captured_native_stderr

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
GIF_SUFFIXES = (".gif",)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FIT_MODES = ("crop", "pad")

# Frames decoded per decord call: large enough to amortise seeking, small enough to stay streaming.
_DECODE_BATCH = 16


def iter_frames(
    path: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
    source_fps: float | None = None,
    fit: str = "crop",
    label: str = "video",
) -> Iterator[np.ndarray]:
    """Yield uint8 (height, width, 3) RGB frames from a video file, GIF or folder of frames.

    Arguments are checked and the source is opened before this returns, so a bad path or value
    raises `UserInputError` here rather than at the first `next()`. `label` names the setting the
    path came from (e.g. "condition.video") in error messages.
    """
    _check_geometry(height, width, fit)
    source, indices = _plan(path, start, stride, max_frames, fps, source_fps, label)
    return (_fit_if_sized(frame, height, width, fit) for frame in source.read(indices))


def read_frames(
    path: str | Path,
    num_frames: int,
    *,
    height: int | None = None,
    width: int | None = None,
    start: int = 0,
    stride: int = 1,
    fps: float | None = None,
    source_fps: float | None = None,
    max_frames: int | None = None,
    fit: str = "crop",
    label: str = "video",
) -> np.ndarray:
    """Exactly `num_frames` frames as one uint8 (num_frames, height, width, 3) array.

    `max_frames` caps how many frames the selection may take from the source. Raises `UserInputError`
    saying how many frames the selection found when there are fewer than `num_frames`, e.g.
    "condition.video dance.mp4 has 12 frames after start=0 stride=2 (24 in the source); 16 requested".
    """
    if num_frames < 1:
        raise UserInputError(f"{label}: the number of frames must be at least 1, got {num_frames}")
    _check_geometry(height, width, fit)
    # Only indices are planned here (cheap); at most num_frames of them are decoded.
    source, indices = _plan(path, start, stride, max_frames, fps, source_fps, label)
    indices = indices[:num_frames]
    if len(indices) < num_frames:
        selection = f"start={start} stride={stride}" + (f" fps={fps:g}" if source.resampled else "")
        selection += f" max_frames={max_frames}" if max_frames is not None else ""
        raise UserInputError(
            f"{label} {path} has {len(indices)} frames after {selection} "
            f"({source.num_frames} in the source); {num_frames} requested"
        )
    frames = [_fit_if_sized(frame, height, width, fit) for frame in source.read(indices)]
    sizes = sorted({frame.shape[:2] for frame in frames})
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise UserInputError(f"{label} {path} has frames of different sizes ({listed}); give a height and width to fit them")
    return np.stack(frames)


def fit_frame(frame: np.ndarray, height: int, width: int, fit: str = "crop") -> np.ndarray:
    """Resize one (h, w, 3) frame to (height, width, 3) keeping its aspect: centre crop or pad (see module doc)."""
    if fit not in FIT_MODES:
        raise UserInputError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    source_height, source_width = frame.shape[:2]
    if (source_height, source_width) == (height, width):
        return frame
    if fit == "crop":
        scale = max(height / source_height, width / source_width)
        # max() guards against rounding leaving the scaled frame one pixel short of the target.
        scaled_height = max(height, round(source_height * scale))
        scaled_width = max(width, round(source_width * scale))
    else:
        scale = min(height / source_height, width / source_width)
        scaled_height = min(height, max(1, round(source_height * scale)))
        scaled_width = min(width, max(1, round(source_width * scale)))
    # INTER_AREA averages when shrinking (no aliasing); cubic is the usual choice when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(frame, (scaled_width, scaled_height), interpolation=interpolation)
    top, left = (scaled_height - height) // 2, (scaled_width - width) // 2
    if fit == "crop":
        return np.ascontiguousarray(scaled[top : top + height, left : left + width])
    canvas = np.zeros((height, width, 3), dtype=frame.dtype)
    canvas[-top : -top + scaled_height, -left : -left + scaled_width] = scaled
    return canvas


def read_image(
    path: str | Path, height: int | None = None, width: int | None = None, fit: str = "crop", label: str = "image"
) -> np.ndarray:
    """One image file as uint8 (height, width, 3) RGB, decoded and fitted exactly as a folder's frames are
    (without height and width: at its stored size).

    The one reader for single images (stylet2v0's style image, `stylevid invert input=image.png`, evaluate's
    style images), so that inverting an image by itself gives the same latents as stylet2v0's inversion of it as
    a style. Images above `stylevid.io.images.MAX_IMAGE_PIXELS` are refused before they are decoded.
    """
    _check_geometry(height, width, fit)
    return _fit_if_sized(decode_image(path, label), height, width, fit)


def select_frame_indices(
    num_frames: int,
    *,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
    timestamps: np.ndarray | None = None,
) -> list[int]:
    """Source frame indices to read: every `stride`-th frame from `start`, at most `max_frames`.

    With both `fps` and the source's per-frame `timestamps` (seconds), output frame k is the source
    frame nearest to time timestamps[start] + k * stride / fps, for times before the clip ends (the
    end of its last frame); frames repeat if fps is above the source's rate.
    """
    if start >= num_frames:
        return []
    if fps is None or timestamps is None:
        indices = list(range(start, num_frames, stride))
        return indices if max_frames is None else indices[:max_frames]

    timestamps = np.asarray(timestamps, dtype=np.float64)
    # The clip ends when its last frame stops showing, one frame period after that frame starts.
    # Timestamps are stored rounded (to 1 ms in webm), hence the tolerance.
    frame_period = float(np.median(np.diff(timestamps))) if num_frames > 1 else 0.0
    end_time = timestamps[-1] + frame_period - 1e-3
    indices = []
    k = 0
    while max_frames is None or len(indices) < max_frames:
        wanted_time = timestamps[start] + k * stride / fps
        if k > 0 and wanted_time >= end_time:
            break
        after = int(np.searchsorted(timestamps, wanted_time))
        candidates = [i for i in (after - 1, after) if 0 <= i < num_frames]
        indices.append(min(candidates, key=lambda i: abs(timestamps[i] - wanted_time)))
        k += 1
    return indices


def natural_sort_key(name: str) -> list:
    """Sort key ordering "frame2.png" before "frame10.png"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# --- sources -----------------------------------------------------------------------------------


@dataclass
class _Source:
    path: Path
    num_frames: int
    timestamps: np.ndarray | None  # seconds per frame; None when the source has no timing
    resampled: bool = False

    def read(self, indices: list[int]) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _DecordVideo(_Source):
    def __init__(self, path: Path, label: str):
        import decord

        # ffmpeg and decord print their own lines for a broken file (to fd 2, from C); keep them for the message.
        with captured_native_stderr() as native:
            try:
                self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
                num_frames = len(self._reader)
                timestamps = self._reader.get_frame_timestamp(range(num_frames))[:, 0] if num_frames else None
                error = None
            except (RuntimeError, decord.DECORDError) as caught:
                error = caught
        if error is not None:
            reason = native.reason() or _first_line(error)
            raise UserInputError(f"{label} {path} cannot be decoded as a video ({reason})")
        super().__init__(path, num_frames, timestamps)
        self._label = label

    def read(self, indices: list[int]) -> Iterator[np.ndarray]:
        import decord

        for begin in range(0, len(indices), _DECODE_BATCH):
            batch = indices[begin : begin + _DECODE_BATCH]
            error = None
            # Decoded outside the consumer's code: fd 2 is redirected only while decord works, never across a yield.
            with captured_native_stderr() as native:
                try:
                    try:
                        frames = self._reader.get_batch(batch).asnumpy()
                    except decord.DECORDError:
                        # decord 0.6 mishandles rows padded for alignment on a few narrow widths (8, 16,
                        # 24, 48, 72 px): the batch copy fails ("from_size == to_size") and a single frame
                        # comes back as (h, w, padded row / w). Read frames one by one and drop the padding.
                        frames = [_drop_row_padding(self._reader[index].asnumpy()) for index in batch]
                except (RuntimeError, decord.DECORDError) as caught:
                    error = caught
            if error is not None:
                reason = native.reason() or _first_line(error)
                raise UserInputError(f"{self._label} {self.path}: frames {batch[0]}..{batch[-1]} cannot be decoded ({reason})")
            yield from frames


class _Gif(_Source):
    def __init__(self, path: Path, label: str):
        from PIL import Image, UnidentifiedImageError

        image_size(path, label)  # every frame of a GIF has the image's size: refuse a huge one before decoding
        try:
            with Image.open(path) as image:
                durations = []
                for index in range(image.n_frames):
                    image.seek(index)
                    durations.append(image.info.get("duration", 0) or 0)
        except (OSError, UnidentifiedImageError) as error:
            raise UserInputError(f"{label} {path} cannot be decoded as a GIF ({_first_line(error)})") from None
        # A GIF without frame durations has no timing; do not invent one.
        timestamps = np.cumsum([0, *durations[:-1]]) / 1000.0 if all(durations) else None
        super().__init__(path, len(durations), timestamps)

    def read(self, indices: list[int]) -> Iterator[np.ndarray]:
        from PIL import Image

        with Image.open(self.path) as image:
            for index in indices:
                image.seek(index)
                yield np.asarray(image.convert("RGB"))


class _FrameFolder(_Source):
    def __init__(self, path: Path, label: str, source_fps: float | None):
        files = sorted(
            (file for file in path.iterdir() if file.is_file() and file.suffix.lower() in FRAME_SUFFIXES),
            key=lambda file: natural_sort_key(file.name),
        )
        if not files:
            raise UserInputError(f"{label} {path} is a folder with no frames ({', '.join(FRAME_SUFFIXES)})")
        timestamps = np.arange(len(files)) / source_fps if source_fps else None
        super().__init__(path, len(files), timestamps)
        self._files = files
        self._label = label

    def read(self, indices: list[int]) -> Iterator[np.ndarray]:
        for index in indices:
            yield decode_image(self._files[index], self._label)


def _open(path: Path, label: str, source_fps: float | None) -> _Source:
    if not path.exists():
        raise UserInputError(f"{label} {path}: no such file or folder")
    if path.is_dir():
        return _FrameFolder(path, label, source_fps)
    suffix = path.suffix.lower()
    if suffix in GIF_SUFFIXES:
        source = _Gif(path, label)
    elif suffix in VIDEO_SUFFIXES:
        source = _DecordVideo(path, label)
    else:
        known = ", ".join(VIDEO_SUFFIXES + GIF_SUFFIXES)
        raise UserInputError(f"{label} {path}: not a video ({known}) or a folder of frames")
    if source_fps:
        # An explicit source rate overrides the file's own timing (e.g. broken metadata).
        source.timestamps = np.arange(source.num_frames) / source_fps
    return source


def _plan(path, start, stride, max_frames, fps, source_fps, label) -> tuple[_Source, list[int]]:
    for name, value in (("start", start), ("stride", stride), ("max_frames", max_frames)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
            raise UserInputError(f"{label}: {name} must be an integer, got {value!r}")
    if start < 0:
        raise UserInputError(f"{label}: start must be >= 0, got {start}")
    if stride < 1:
        raise UserInputError(f"{label}: stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 0:
        raise UserInputError(f"{label}: max_frames must be >= 0, got {max_frames}")
    for name, value in (("fps", fps), ("source_fps", source_fps)):
        if value is not None and not value > 0:
            raise UserInputError(f"{label}: {name} must be > 0, got {value}")

    source = _open(Path(path).expanduser(), label, source_fps)
    if fps is not None and source.timestamps is None:
        logger.warning("%s %s has no frame timing; fps=%g ignored (pass its source fps to resample)", label, path, fps)
    source.resampled = fps is not None and source.timestamps is not None
    indices = select_frame_indices(
        source.num_frames,
        start=start,
        stride=stride,
        max_frames=max_frames,
        fps=fps,
        timestamps=source.timestamps,
    )
    return source, indices


def _check_geometry(height: int | None, width: int | None, fit: str) -> None:
    if fit not in FIT_MODES:
        raise UserInputError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    if (height is None) != (width is None):
        raise UserInputError(f"give both height and width or neither, got height={height} width={width}")
    if height is not None and (height <= 0 or width <= 0 or height % 8 or width % 8):
        raise UserInputError(f"height and width must be positive multiples of 8, got {height}x{width}")


def _fit_if_sized(frame: np.ndarray, height: int | None, width: int | None, fit: str) -> np.ndarray:
    return frame if height is None else fit_frame(frame, height, width, fit)


def _drop_row_padding(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if frame.shape[2] == 3:
        return frame
    return frame.reshape(height, -1)[:, : width * 3].reshape(height, width, 3)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def source_frame_rate(path: str | Path, label: str = "video") -> float | None:
    """The frame rate of a video or GIF from its frame timing (median frame interval); None for a folder of
    frames or a file without timing. Opens the file's index only, decodes no frame."""
    source = _open(Path(path).expanduser(), label, None)
    if source.timestamps is None or len(source.timestamps) < 2:
        return None
    interval = float(np.median(np.diff(source.timestamps)))
    return 1.0 / interval if interval > 0 else None


def frame_count(path: str | Path, label: str = "video") -> int:
    """How many frames a video, GIF or folder of frames holds; opens the index only, decodes no frame."""
    return _open(Path(path).expanduser(), label, None).num_frames
