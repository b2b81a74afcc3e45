"""Text-video clips for motion-module training (AnimateDiff Section 4.1.1).

Each item is one clip of `frames` frames taken every `stride`-th source frame from a random start, resized
and centre-cropped to `size` x `size`, randomly flipped left-right, as float (F, 3, size, size) in [-1, 1],
with its caption and the clip's frame rate `fps` = the source's frames per second / `stride` (NaN when the
source has no frame timing; VideoGen conditions on it, Section 3.2). Randomness comes from a generator seeded
by (seed, epoch, index), so an item is the same in every run, worker and rank for a given seed.

A clip that cannot be decoded or is shorter than frames * stride is skipped: the next record is tried,
at most `max_skips` times (never an endless retry), and the number skipped travels with the item so the
trainer can log it.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserInputError
from ..io.video_input import VIDEO_SUFFIXES, _open, fit_frame
from ..sampling.vae import pixels_from_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16
    stride: int = 4
    size: int = 256
    flip: bool = True

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.stride + 1


@dataclass(frozen=True)
class VideoRecord:
    path: Path
    caption: str


def read_csv(path: Path, key: str) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV file; a binary or malformed file is one line naming `key`."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserInputError(f"{key} {path} is not a readable CSV text file ({type(error).__name__})") from None


def webvid_records(csv_path: str | Path, video_folder: str | Path) -> list[VideoRecord]:
    """WebVid's CSV (videoid, name = caption, page_dir): video at <folder>/<videoid>.mp4 or <folder>/<page_dir>/<videoid>.mp4."""
    csv_path, video_folder = Path(csv_path), Path(video_folder)
    if not csv_path.is_file():
        raise UserInputError(f"data.csv {csv_path} not found")
    if not video_folder.is_dir():
        raise UserInputError(f"data.video_folder {video_folder} is not a folder")
    records = []
    columns, rows = read_csv(csv_path, "data.csv")
    missing = {"videoid", "name"} - set(columns)
    if missing:
        raise UserInputError(f"data.csv {csv_path} lacks the column(s) {', '.join(sorted(missing))} (WebVid: videoid, name, page_dir)")
    for row in rows:
        flat = video_folder / f"{row['videoid']}.mp4"
        nested = video_folder / (row.get("page_dir") or "") / f"{row['videoid']}.mp4"
        records.append(VideoRecord(flat if flat.exists() or not nested.exists() else nested, row["name"] or ""))
    if not records:
        raise UserInputError(f"data.csv {csv_path} lists no videos")
    return records


def folder_records(folder: str | Path, captions_csv: str | Path | None = None, captions: bool = True) -> list[VideoRecord]:
    """Videos in `folder` with a sidecar `<name>.txt` caption each, or captions from a CSV (file, caption).
    `captions=False` (targets that train on unlabeled video): a video without a sidecar gets the empty caption."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"data.video_folder {folder} is not a folder")
    if captions_csv:
        if not Path(captions_csv).is_file():
            raise UserInputError(f"data.captions {captions_csv} not found")
        columns, rows = read_csv(Path(captions_csv), "data.captions")
        if not {"file", "caption"} <= set(columns):
            raise UserInputError(f"data.captions {captions_csv} needs the columns file, caption")
        records = [VideoRecord(folder / (row["file"] or ""), row["caption"] or "") for row in rows]
    else:
        videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        records = []
        for video in videos:
            sidecar = video.with_suffix(".txt")
            if not sidecar.exists():
                if not captions:
                    records.append(VideoRecord(video, ""))
                    continue
                raise UserInputError(f"{video} has no caption file {sidecar.name} (or pass data.captions=<csv>)")
            records.append(VideoRecord(video, sidecar.read_text(errors="replace").strip()))
    if not records:
        raise UserInputError(f"data.video_folder {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return records


class VideoClipDataset(Dataset):
    def __init__(self, records: list[VideoRecord], spec: ClipSpec, seed: int = 0, max_skips: int = 16):
        self.records, self.spec, self.seed, self.max_skips = records, spec, seed, max_skips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        for skipped in range(self.max_skips + 1):
            record = self.records[(index + skipped) % len(self.records)]
            rng = np.random.default_rng([self.seed, self.epoch, index, skipped])
            read = self._read(record, rng)
            if read is not None:
                clip, fps = read
                return {"pixel_values": clip, "caption": record.caption, "fps": fps, "skipped": skipped}
        raise RuntimeError(f"{self.max_skips + 1} clips in a row from record {index} on could not be read; check the data")

    def first_readable(self) -> int | None:
        """Index of the first record that gives a clip, or None when no video at all can be used.

        Checked before training: otherwise a data set of only unreadable (or too short) videos would end in
        the RuntimeError of __getitem__ at the first step, after the model is loaded.
        """
        for index, record in enumerate(self.records):
            if self.read_clip(record, np.random.default_rng([self.seed, 0, index])) is not None:
                return index
        return None

    def read_clip(self, record: VideoRecord, rng: np.random.Generator) -> torch.Tensor | None:
        read = self._read(record, rng)
        return None if read is None else read[0]

    def _read(self, record: VideoRecord, rng: np.random.Generator) -> tuple[torch.Tensor, float] | None:
        """(clip, its fps) or None when the record gives no clip."""
        spec = self.spec
        try:
            source = _open(record.path, "video", None)
            if source.num_frames < spec.span:
                log.info("skipped %s: %d frames, a clip needs %d", record.path, source.num_frames, spec.span)
                return None
            start = int(rng.integers(0, source.num_frames - spec.span + 1))
            indices = list(range(start, start + spec.span, spec.stride))
            frames = np.stack([fit_frame(frame, spec.size, spec.size, "crop") for frame in source.read(indices)])
        except (UserInputError, RuntimeError, OSError) as error:
            log.info("skipped %s: %s", record.path, str(error).splitlines()[0] if str(error) else type(error).__name__)
            return None
        if spec.flip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return pixels_from_uint8(frames), source_fps(source.timestamps) / spec.stride  # (F, 3, size, size) in [-1, 1]


def source_fps(timestamps: np.ndarray | None) -> float:
    """Frames per second of a source from its frame start times: 1 / the median frame period (robust to the odd
    irregular frame of variable-rate files), rounded to 1/1000 (decoders give float32 times: 7.9999998 for 8 fps);
    NaN without timing."""
    if timestamps is None or len(timestamps) < 2:
        return float("nan")
    period = float(np.median(np.diff(np.asarray(timestamps, dtype=np.float64))))
    return round(1.0 / period, 3) if period > 0 else float("nan")


def collate_clips(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "captions": [item["caption"] for item in items],
        "fps": torch.tensor([float(item.get("fps", float("nan"))) for item in items], dtype=torch.float32),  # (B,)
        "skipped": sum(item["skipped"] for item in items),
    }
