"""Text-image-video items for `stylevid train image_prompt` (VideoBooth-style paper, Section 4.1).

`data=image_prompt`: a folder written by `scripts/build_image_prompt_dataset.py`, holding `dataset.csv` with
columns video, caption, subject, crop[, box] (paths relative to the folder) and the crops. `data=toy`: toy-world
clips (`data.toy_clips`) with the toy world's ground truth as the image prompt: the clip's object drawn alone on the
neutral background, cropped around it, and its shape word ("star") as the subject.

An item is a video clip's item (pixel_values, caption, fps, skipped) plus subject (str) and crop (uint8 (h, w, 3)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserInputError
from ..models.image_prompt import BACKGROUND
from .videos import ClipSpec, VideoClipDataset, VideoRecord, collate_clips, read_csv

COLUMNS = ("video", "caption", "subject", "crop")
CROP_MARGIN = 2  # pixels kept around the toy object's mask


class ImagePromptClips(Dataset):
    """A clip dataset with each record's subject word and image-prompt crop."""

    def __init__(self, clips: Dataset, subjects: list[str], crops: list[Path]):
        self.clips, self.subjects, self.crops = clips, subjects, crops

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        from ..io.images import decode_image

        item = self.clips[index]
        # The record the clip came from (the clip dataset moves past unreadable videos, `skipped` of them).
        source = (index + int(item["skipped"])) % len(self.subjects)
        return {**item, "subject": self.subjects[source], "crop": decode_image(self.crops[source], "crop")}


def folder_dataset(data, seed: int) -> ImagePromptClips:
    folder = Path(str(data.folder)).expanduser()
    csv_path = folder / str(data.get("csv") or "dataset.csv")
    if not csv_path.is_file():
        raise UserInputError(f"data.folder={folder} has no {csv_path.name} (write it with scripts/build_image_prompt_dataset.py)")
    columns, rows = read_csv(csv_path, "data.csv")
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise UserInputError(f"{csv_path} needs columns {', '.join(COLUMNS)}[, box]; missing {', '.join(missing)}")
    rows = [row for row in rows if row["subject"] and row["subject"].lower() in row["caption"].lower()]
    if not rows:
        raise UserInputError(f"{csv_path} has no row whose caption contains its subject")
    records = [VideoRecord(folder / row["video"], row["caption"]) for row in rows]
    spec = ClipSpec(frames=int(data.frames), stride=int(data.stride), size=int(data.size), flip=bool(data.get("flip", False)))
    clips = VideoClipDataset(records, spec, seed=seed, max_skips=int(data.get("max_skips", 16)))
    return ImagePromptClips(clips, [row["subject"] for row in rows], [folder / row["crop"] for row in rows])


def crop_to_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image`'s pixels where `mask` (bool (H, W), not empty) holds, on the neutral background, cropped around the
    mask with CROP_MARGIN pixels to spare."""
    alone = np.where(mask[..., None], image, np.uint8(BACKGROUND)).astype(np.uint8)
    rows, cols = np.nonzero(mask)
    top, left = max(0, rows.min() - CROP_MARGIN), max(0, cols.min() - CROP_MARGIN)
    return alone[top:rows.max() + 1 + CROP_MARGIN, left:cols.max() + 1 + CROP_MARGIN]


def toy_subject_crop(scene) -> np.ndarray:
    """The toy object alone on the neutral background at the scene's first frame, cropped around its mask."""
    from . import toy_world

    frame = toy_world.render_frame(scene, 0.0)
    return crop_to_mask(np.full(frame.image.shape, toy_world.COLOURS[scene.colour], np.uint8), frame.mask.astype(bool))


class ToyImagePromptClips(Dataset):
    """Toy clips with their ground-truth subject crops (the caption always names the shape)."""

    def __init__(self, clips):
        self.clips = clips

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        _, scene, _, _ = self.clips.clip(index)  # the same draws as the item's: a pure function of (seed, epoch, index)
        return {**item, "subject": scene.shape, "crop": toy_subject_crop(scene)}


def image_prompt_dataset(cfg) -> Dataset:
    data = cfg.data
    if data.name == "toy":
        from .toy_clips import toy_clip_dataset

        return ToyImagePromptClips(toy_clip_dataset(data, int(cfg.seed)))
    if data.name != "image_prompt":
        raise UserInputError(f"target image_prompt trains on data=image_prompt (a built folder) or data=toy, not data={data.name}")
    return folder_dataset(data, int(cfg.seed))


def collate_image_prompt(items: list[dict]) -> dict:
    return {**collate_clips(items), "subjects": [item["subject"] for item in items], "crops": [item["crop"] for item in items]}
