"""`toy_depth`: the toy world's depth annotator, a small transformers `DPTForDepthEstimation` on fresh toy frames.

Gen-1's structure is the input video's depth (MiDaS DPT in the paper). On real clips stylevid runs a pretrained DPT;
no such weights can be downloaded here, so the toy Gen-1 ships a DPT of its own, trained on the ground truth the
toy world gives with every frame (`toy_world.render_frame(...).depth`: objects near, backgrounds far). It is loaded
by `conditions.depth.DepthAnnotator` like any hub DPT, so `method=gen1 model=toy` runs the real annotator code path
on any toy video, not the toy world's renderer.

Batches: rank 0's first micro-batch of step s is a function of (seed, s) (`training.toy.batch_key`): random scenes at
random times, their 64-px frames in [-1, 1] (what `DPTImageProcessor` gives at 64 px with mean = std = 0.5) and
their depth. Loss: L1 between the predicted depth (area-resized from the head's 2x size, as the
processor's post-processing resizes it to the frame) and the truth, per pixel. Exported as `<run>/depth/`: the DPT and
its image processor (`save_pretrained`), what `DepthAnnotator.from_pretrained` and a Gen-1 manifest's
`depth_annotator` read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data import toy_world
from ...sampling.vae import pixels_from_uint8
from .. import toy
from . import Step, TrainingTarget, register

# A DPT of about 0.4 M parameters at the toy world's 64 px: 8-px patches (an 8x8 token grid, the latent grid of the
# toy VAE), four ViT layers reassembled at 4, 2, 1 and 1/2 of that grid, as DPT-Hybrid's neck does at its scale.
TOY_DPT = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
           "image_size": toy_world.SIZE, "patch_size": 8, "backbone_out_indices": [0, 1, 2, 3],
           "neck_hidden_sizes": [16, 16, 32, 32], "fusion_hidden_size": 32, "reassemble_factors": [4, 2, 1, 0.5],
           "initializer_range": 0.1}
# The depth head ends in a ReLU that starts dead (its input is below 0 nearly everywhere), so nothing trains; its last
# convolution starts as the constant of the toy depths' middle instead (weights 0, bias HEAD_BIAS), so every pixel
# starts in the ReLU's linear part and the weights get the gradient of the features in front of it.
HEAD_BIAS = 0.5


def toy_dpt(seed: int = 0):
    """(DPTForDepthEstimation, DPTImageProcessor) at the toy world's size, seeded."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    model = DPTForDepthEstimation(DPTConfig(**TOY_DPT))
    with torch.no_grad():
        model.head.head[-2].weight.zero_()
        model.head.head[-2].bias.fill_(HEAD_BIAS)
    processor = DPTImageProcessor(size={"height": toy_world.SIZE, "width": toy_world.SIZE}, keep_aspect_ratio=False)
    return model, processor


def depth_batch(batch_size: int, seed: int, step: int, micro: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh toy frames and their true depth: pixels (B, 3, 64, 64) in [-1, 1], depth (B, 64, 64) in [0, 1]."""
    rng = np.random.default_rng(toy.batch_key(seed, step, micro, rank))
    frames = [toy_world.render_frame(toy_world.random_scene(rng), float(rng.uniform(0, toy_world.FRAMES - 1)))
              for _ in range(batch_size)]
    depth = torch.from_numpy(np.stack([frame.depth for frame in frames]).astype(np.float32))
    return pixels_from_uint8(np.stack([frame.image for frame in frames])), depth


class DepthObjective(torch.nn.Module):
    """L1 between the DPT's depth and the truth, as one module's forward (so that DDP sees what it synchronises)."""

    def __init__(self, dpt):
        super().__init__()
        self.dpt = dpt

    def forward(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        predicted = self.dpt(pixel_values=pixels).predicted_depth  # DPT's head upsamples: twice the input's size
        predicted = torch.nn.functional.interpolate(predicted[:, None], size=depth.shape[-2:], mode="area")[:, 0]
        return (predicted - depth).abs().mean()


@register
class ToyDepth(TrainingTarget):
    name = "toy_depth"
    description = "the toy world's depth annotator (transformers DPT) on fresh toy frames and their true depth"
    example = "trainer.max_steps=1000 output_dir=build/toy/depth_run"

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        self.dpt, self.processor = toy_dpt(int(cfg.seed))
        self.objective = DepthObjective(self.dpt.train()).to(device)

    @property
    def model(self):
        return self.objective

    def batch(self, at: Step):
        return depth_batch(int(self.cfg.trainer.batch_size), int(self.cfg.seed), at.step, at.micro, at.rank)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        pixels, depth = batch
        return model(pixels.to(self.device), depth.to(self.device))

    # --- weights ------------------------------------------------------------------------------------------

    @staticmethod
    def dpt_weights(state_dict) -> dict:
        return {key.removeprefix("dpt."): value for key, value in state_dict.items()}

    def save_weights(self, directory: Path, state_dict) -> None:
        toy.save_state(directory, self.dpt_weights(state_dict))

    def load_weights(self, directory: Path) -> None:
        toy.load_state(self.dpt, directory)

    def export(self, run_dir: Path, state_dict) -> dict:
        self.dpt.load_state_dict(self.dpt_weights(state_dict))
        self.dpt.to("cpu").save_pretrained(str(run_dir / "depth"), safe_serialization=True)
        self.processor.save_pretrained(str(run_dir / "depth"))
        return {"transformers": "depth/"}

    def record(self) -> dict:
        return {"dpt": dict(TOY_DPT)}
