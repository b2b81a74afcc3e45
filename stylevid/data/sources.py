"""The video clips a training target reads, whichever `data=` names them: webvid, folder or toy.

Every video target (motion_module, the VideoGen parts) gets its clips here, so the data sources, their checks and
their one-line refusals are written once.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..errors import UserInputError
from .videos import ClipSpec, VideoClipDataset, folder_records, webvid_records

VIDEO_SOURCES = ("webvid", "folder", "toy")


def check_video_source(cfg, target: str) -> None:
    """One line when `data=` is not a video source (e.g. data=images for a video target), before anything loads."""
    name = cfg.data.get("name")
    if name not in VIDEO_SOURCES:
        raise UserInputError(f"target {target} trains on videos: data={', data='.join(VIDEO_SOURCES)}, not data={name}")


def clip_dataset(cfg, target: str, captions: bool = True) -> Dataset:
    """The clips of `cfg.data` for target `target` (named in the refusal when data= is not a video source).
    `captions=False`: the target trains on unlabeled video, so a folder needs no caption files."""
    data = cfg.data
    if data.name == "toy":
        from .toy_clips import toy_clip_dataset

        return toy_clip_dataset(data, int(cfg.seed))
    check_video_source(cfg, target)
    spec = ClipSpec(frames=int(data.frames), stride=int(data.stride), size=int(data.size), flip=bool(data.flip))
    records = webvid_records(data.csv, data.video_folder) if data.name == "webvid" else folder_records(
        data.video_folder, data.get("captions"), captions)
    dataset = VideoClipDataset(records, spec, seed=int(cfg.seed), max_skips=int(data.get("max_skips", 16)))
    if dataset.first_readable() is None:
        raise UserInputError(
            f"none of the {len(records)} videos for data.video_folder={data.video_folder} can be read as a clip of "
            f"{spec.frames} frames every {spec.stride} ({spec.span} source frames): all unreadable or too short"
        )
    return dataset
