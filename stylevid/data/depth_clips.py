"""Depth maps for training clips that carry none (Gen-1's structure stages on real video, and subject images).

Gen-1 (paper Section 3.3) conditions on "depth estimates extracted from input video frames" with MiDaS DPT-Large.
The toy world renders its ground-truth depth with every frame (`ToyClipDataset(depth=True)`); real clips (webvid,
folder) and customization images get theirs here, from the depth annotator of `stylevid.conditions.depth`, in the
training step on the trainer's device (a DPT in every data-loader worker would run on the CPU, many times over).

Normalisation is the annotator's: one min/max over each clip (a per-frame stretch would make the depth flicker when
the nearest object moves away), so a clip's maps are in [0, 1], larger is nearer, as the toy world's are and as
`models.gen1.structure_condition` takes them. The sampler estimates and normalises the input video's depth the same
way, so the model sees one kind of map in training and at inference.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserInputError

TINY = "tiny"  # a random in-memory DPT (tests): the same code path as a real model, no weights


def load_depth_annotator(source: str, device: torch.device, key: str = "gen1.depth_model"):
    """The depth annotator `source` names: `tiny`, a hub id or a local directory (one line naming `key` otherwise).

    Built here from the annotator's parts rather than `DepthAnnotator.from_pretrained`, whose refusals name
    `annotator.path` (the generate task's key), not the training key a user typed."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from ..conditions import load_annotator_weights
    from ..conditions.depth import DepthAnnotator, tiny_depth_annotator

    text = str(source or "").strip()
    if not text:
        raise UserInputError(f"{key} is not set; pass {key}=<a depth-estimation model: hub id or local directory>")
    if text == TINY:
        return tiny_depth_annotator(device=device)
    options = dict(what="depth annotator", option=key)
    model = load_annotator_weights(AutoModelForDepthEstimation.from_pretrained, text, **options)
    processor = load_annotator_weights(AutoImageProcessor.from_pretrained, text, required_file="preprocessor_config.json",
                                       **options)
    return DepthAnnotator(model, processor, device=device)


def uint8_frames(pixel_values: torch.Tensor) -> np.ndarray:
    """Float pixels (..., 3, H, W) in [-1, 1] back to uint8 (..., H, W, 3): the exact inverse of
    `sampling.vae.pixels_from_uint8` for pixels that came from uint8 frames (every dataset's do)."""
    pixels = ((pixel_values.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).numpy()


def clip_depth(annotator, frames: np.ndarray) -> np.ndarray:
    """Depth (F, H, W) float32 in [0, 1], larger is nearer, of one clip's uint8 frames (F, H, W, 3), normalised once
    over the clip (a single image is a clip of one frame)."""
    from ..models.gen1 import depth_from_maps

    return depth_from_maps(annotator(list(frames)))


def batch_depth(annotator, pixel_values: torch.Tensor) -> np.ndarray:
    """Depth of a batch of clips (B, F, 3, H, W) in [-1, 1]: (B, F, H, W), each clip normalised on its own."""
    frames = uint8_frames(pixel_values)
    return np.stack([clip_depth(annotator, clip) for clip in frames]).astype(np.float32)
