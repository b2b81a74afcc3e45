"""Depth maps for the depth ControlNet, from any transformers depth-estimation model.

Default model: `Intel/dpt-hybrid-midas`, the MiDaS DPT-Hybrid that made the training maps of
lllyasviel's depth ControlNet (sd-controlnet-depth) and that Text2Video-Zero uses for depth control,
so maps match what the ControlNet expects. `LiheYoung/depth-anything-small-hf` is a faster, smaller
choice (25M parameters against 123M) that predicts the same kind of relative depth; pass it, or a
local folder, as `annotator.path=`.

Both predict relative inverse depth (near is large), which is what the ControlNet reads as bright.
The maps are normalised with one min/max over the whole clip, not per frame: per-frame
normalisation stretches every frame to 0..255 on its own, so a frame whose nearest object moves away
brightens all over and the depth flickers. As in the ControlNet depth example, the result is one grey map repeated into three uint8 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stylevid.conditions import load_annotator_weights

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"


class DepthAnnotator:
    """A depth-estimation model and its image processor, run in batches over a clip."""

    def __init__(self, model, image_processor, *, device: str | torch.device = "cpu", batch_size: int = 8):
        self.model = model.to(device).eval()
        self.image_processor = image_processor
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str = DEFAULT_DEPTH_MODEL,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        local_files_only: bool = False,
    ) -> DepthAnnotator:
        """Load from a hub id or a local folder holding the model and its image processor config."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        options = dict(what="depth annotator", option="annotator.path", local_files_only=local_files_only)
        model = load_annotator_weights(AutoModelForDepthEstimation.from_pretrained, path, dtype=dtype, **options)
        image_processor = load_annotator_weights(
            AutoImageProcessor.from_pretrained, path, required_file="preprocessor_config.json", **options
        )
        return cls(model, image_processor, device=device, batch_size=batch_size)

    @torch.inference_mode()
    def predict(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Raw relative depth, float32 (N, H, W), each map resized back to its frame's size."""
        depths = []
        for begin in range(0, len(frames), self.batch_size):
            batch = list(frames[begin : begin + self.batch_size])
            inputs = self.image_processor(images=batch, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
            outputs = self.model(pixel_values=pixel_values)
            resized = self.image_processor.post_process_depth_estimation(
                outputs, target_sizes=[frame.shape[:2] for frame in batch]
            )
            depths.extend(item["predicted_depth"].float().cpu().numpy() for item in resized)
        return np.stack(depths).astype(np.float32)

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Depth maps for a clip: uint8 (N, H, W, 3), normalised once over the clip."""
        return gray_to_rgb(normalize_depth_per_clip(self.predict(frames)))


def normalize_depth_per_clip(depth: np.ndarray) -> np.ndarray:
    """Map a clip's depth (N, H, W) to uint8 0..255 with one min/max for all frames.

    A frame that is a uniformly scaled copy of another keeps that ratio in its levels; a constant
    clip (no structure) maps to zeros rather than dividing by zero.
    """
    depth = np.asarray(depth, dtype=np.float64)
    low, high = float(depth.min()), float(depth.max())
    if high - low <= 0:
        return np.zeros(depth.shape, np.uint8)
    return np.round((depth - low) / (high - low) * 255.0).astype(np.uint8)


def gray_to_rgb(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W, 3), the grey map repeated: ControlNet takes three channels."""
    return np.repeat(maps[..., None], 3, axis=-1)


def depth_maps(
    frames: Sequence[np.ndarray],
    annotator: DepthAnnotator | None = None,
    path: str = DEFAULT_DEPTH_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Depth maps for a clip with `annotator`, or with a model loaded from `path` onto `device` in `dtype`."""
    if annotator is None:
        annotator = DepthAnnotator.from_pretrained(path, device=device, dtype=dtype, batch_size=batch_size)
    return annotator(frames)


def tiny_depth_annotator(
    seed: int = 0, image_size: int = 32, batch_size: int = 8, device: str | torch.device = "cpu"
) -> DepthAnnotator:
    """A random DPT of about 100k parameters, built in memory, for tests and smoke runs.

    Its depth means nothing, but it runs the same code path as a real model (processor, batching,
    post-processing) in milliseconds, with no download.
    """
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=image_size,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        # The default 0.02 makes the ReLU head output ~1e-9 everywhere; 0.2 gives a usable range.
        initializer_range=0.2,
    )
    model = DPTForDepthEstimation(config)
    image_processor = DPTImageProcessor(size={"height": image_size, "width": image_size}, keep_aspect_ratio=False)
    return DepthAnnotator(model, image_processor, device=device, batch_size=batch_size)
