"""Captioned images for LoRA / DreamBooth fine-tuning of an image model (`data=images`).

A folder of images (png, jpg, jpeg, webp), each resized and centre-cropped to `size` x `size`, flipped left-right
with probability one half when `flip` is on, as float (3, size, size) pixels in [-1, 1]. Captions are
DreamBooth's: one `caption` for every image ("a photo of sks dog"), or a sidecar `<name>.txt` beside an image,
which wins when present. The flip of item `index` comes from a generator seeded by (seed, epoch, index), so an
item is the same in every run, worker and rank.

With prior preservation an item is also one class image ("a photo of a dog", from `class_folder`): the dataset
is as long as the longer of the two lists (the shorter one repeats) and `collate_with_class` puts the class
examples after the instance examples of a batch, as DreamBooth does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserInputError
from ..io.images import decode_image
from ..io.video_input import fit_frame
from ..sampling.vae import pixels_from_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption: str


def image_files(folder: str | Path | None, key: str) -> list[Path]:
    """The images directly in `folder`, sorted by name; a missing folder is one line naming `key`."""
    if folder is None or str(folder) in ("", "???"):
        raise UserInputError(f"{key} is required: a folder of images (png, jpg, webp)")
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        raise UserInputError(f"{key}={folder} is not a folder")
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_records(folder, caption: str | None, key: str = "data.folder", caption_key: str = "data.caption") -> list[ImageRecord]:
    """One record per image of `folder`: its sidecar `<name>.txt` caption, else `caption`; none without either."""
    files = image_files(folder, key)
    if not files:
        raise UserInputError(f"{key}={folder} holds no images (png, jpg, jpeg or webp)")
    records = []
    for file in files:
        sidecar = file.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
        text = text or (str(caption) if caption else "")
        if not text:
            raise UserInputError(f"{file.name} in {key}={folder} has no caption: pass {caption_key}=\"a photo of sks dog\" "
                                 f"or write {sidecar.name} beside it")
        records.append(ImageRecord(file, text))
    return records


def load_pixels(path: Path, size: int, flip: bool) -> torch.Tensor:
    """(3, size, size) float pixels in [-1, 1]: resized and centre-cropped, flipped left-right when `flip`."""
    image = fit_frame(decode_image(path, "training image"), size, size, "crop")
    if flip:
        image = image[:, ::-1]
    return pixels_from_uint8(image[None])[0]


class CaptionedImageDataset(Dataset):
    """Instance images (and, with `class_records`, class images for prior preservation), deterministic per item."""

    def __init__(self, records: list[ImageRecord], size: int, flip: bool = False, seed: int = 0,
                 class_records: list[ImageRecord] | None = None):
        self.records, self.size, self.flip, self.seed = list(records), int(size), bool(flip), int(seed)
        self.class_records = list(class_records or [])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(len(self.records), len(self.class_records))

    def _flip(self, index: int, which: int) -> bool:
        if not self.flip:
            return False
        return bool(np.random.default_rng([self.seed, self.epoch, index, which]).random() < 0.5)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index % len(self.records)]
        item = {"pixel_values": load_pixels(record.path, self.size, self._flip(index, 0)), "caption": record.caption}
        if self.class_records:
            other = self.class_records[index % len(self.class_records)]
            item["class_pixel_values"] = load_pixels(other.path, self.size, self._flip(index, 1))
            item["class_caption"] = other.caption
        return item


def collate_with_class(items: list[dict]) -> dict:
    """A batch: pixels (B, 3, H, W) and captions; with class images, the B class examples after the B instance
    ones (2B in all) and `instances` = B, so the loss can split them."""
    pixels = [item["pixel_values"] for item in items]
    captions = [item["caption"] for item in items]
    if "class_pixel_values" in items[0]:
        pixels += [item["class_pixel_values"] for item in items]
        captions += [item["class_caption"] for item in items]
    return {"pixel_values": torch.stack(pixels), "captions": captions, "instances": len(items)}
