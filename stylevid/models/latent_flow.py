"""VideoGen's latent motion flow network (paper Sections 3.3 and 3.5): IFRNet moved from pixels to SD latents.

VideoGen "slightly modif[ies] the IFRNet architecture and simply change[s] the first layer for processing latent
representations". The shape of IFRNet (Kong et al., 2022) kept here:

  * one pyramid encoder shared by both key frames: per level a strided 3x3 conv and a 3x3 conv, PReLU;
  * coarse-to-fine decoders. The coarsest takes both frames' features and the time t as a constant map; every
    finer one takes the coarser level's intermediate-frame features and flows (upsampled), both frames' features
    backward-warped by those flows, and t; each outputs *residual* bidirectional flows F_t->0, F_t->1 (added to the
    upsampled coarser ones) and features for the next level; the finest also an occlusion mask (sigmoid) and a
    residual;
  * the frame z_t = M * warp(z_0, F_t->0) + (1 - M) * warp(z_1, F_t->1) + R, warping with `grid_sample`.

What differs from IFRNet, and why:
  * the first level is not strided. An SD latent is already 8x smaller than the image (a 256-px frame is 32x32);
    IFRNet's stride-2 first level, made to skip full-resolution pixels, would throw away half the latent grid, and
    its 4 stride-2 levels leave 1x1 at a 16x16 latent. Here level l is 2^l smaller than the latent;
    `block_out_channels` gives one level per entry (default 3: latent, 1/2, 1/4);
  * inputs are padded (replicate) to a multiple of 2^(levels-1) and the outputs cropped, so that any latent size
    works and every upsampling is an exact x2;
  * the output convolutions of the decoders start at zero (flows 0, mask 1/2, residual 0): an untrained net is
    linear interpolation, the baseline the flows then improve on, instead of random warps;
  * the encoder sees the latents less their per-channel mean over both frames (IFRNet removes the images' mean):
    SD latent channels carry per-clip offsets that say nothing about motion. The merge uses the raw latents, which
    is the same thing because warping a constant (border padding) leaves it unchanged.

Flows are in latent pixels, x displacement first, backward (`stylevid.sampling.motion.warp_by_flow`):
warp(z_0, F_t->0)[y, x] = z_0[y + F_t->0[1, y, x], x + F_t->0[0, y, x]].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import UserInputError
from ..sampling.motion import warp_by_flow

# SD latents (4 channels): 64x64 at 512 px gives levels of 64, 32 and 16. Tests use TINY_LATENT_FLOW.
DEFAULT_BLOCK_OUT_CHANNELS = (48, 72, 96)
TINY_LATENT_FLOW = {"block_out_channels": (8, 16, 16)}


@dataclass
class LatentFlowOutput(BaseOutput):
    """What `LatentFlowNet.forward` returns; every tensor is at the input latents' size (N, ., h, w).

    flow_t0, flow_t1: (N, 2, h, w) backward flows from the in-between frame to z_0 and z_1 (latent pixels, x first).
    mask: (N, 1, h, w) in (0, 1), the weight of warped z_0 (occlusion mask M).
    residual: (N, C, h, w), added after the merge.
    frame: (N, C, h, w) = mask * warp(z_0, flow_t0) + (1 - mask) * warp(z_1, flow_t1) + residual.
    level_flows: one (N, 4, h, w) tensor [flow_t0, flow_t1] per decoder level, coarse to fine, each upsampled to the
        latent size and scaled to latent pixels (the last one is the final flow): what flow distillation compares
        with the teacher at every level, as IFRNet does.
    """

    flow_t0: torch.Tensor
    flow_t1: torch.Tensor
    mask: torch.Tensor
    residual: torch.Tensor
    frame: torch.Tensor
    level_flows: tuple[torch.Tensor, ...] = ()


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.PReLU(out_channels))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1))
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class _Decoder(nn.Module):
    """One level: input -> features for the next level, and a head with the level's outputs (zero at init)."""

    def __init__(self, in_channels: int, channels: int, head_channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(in_channels, channels), _ResidualBlock(channels))
        self.head = nn.Conv2d(channels, head_channels, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def _upsample_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """A flow at a coarser level to a level `factor` times finer: bilinear, and the displacements scaled."""
    if factor == 1:
        return flow
    return factor * F.interpolate(flow, scale_factor=factor, mode="bilinear", align_corners=False)


class LatentFlowNet(ModelMixin, ConfigMixin):
    """IFRNet-like frame interpolation on latents; `save_pretrained` / `from_pretrained` directories (diffusers).

    forward(z0 (N, C, h, w), z1 (N, C, h, w), t: float or (N,) tensor in [0, 1]) -> LatentFlowOutput.
    """

    @register_to_config
    def __init__(self, in_channels: int = 4, block_out_channels: tuple[int, ...] = DEFAULT_BLOCK_OUT_CHANNELS):
        super().__init__()
        channels = [int(c) for c in block_out_channels]
        if not channels or min(channels) < 1:
            raise UserInputError(f"latent_flow.block_out_channels must be a non-empty list of positive widths, got {list(block_out_channels)}")
        self.encoder = nn.ModuleList(
            nn.Sequential(_conv(in_channels if level == 0 else channels[level - 1], width, stride=1 if level == 0 else 2),
                          _conv(width, width))
            for level, width in enumerate(channels)
        )
        decoders = []
        for level, width in enumerate(channels):
            coarsest = level == len(channels) - 1
            # both frames' features and t; below the coarsest also the coarser features and both flows
            inputs = 2 * width + 1 + (0 if coarsest else channels[level + 1] + 4)
            # flows everywhere; the finest adds the mask logit and the residual
            outputs = 4 + (1 + in_channels if level == 0 else 0)
            decoders.append(_Decoder(inputs, width, outputs))
        self.decoders = nn.ModuleList(decoders)

    @property
    def levels(self) -> int:
        return len(self.decoders)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, t: float | torch.Tensor = 0.5) -> LatentFlowOutput:
        if z0.shape != z1.shape or z0.ndim != 4:
            raise ValueError(f"z0 and z1 must both be (N, C, h, w), got {tuple(z0.shape)} and {tuple(z1.shape)}")
        batch, _, height, width = z0.shape
        t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device).reshape(-1).expand(batch)

        multiple = 2 ** (self.levels - 1)
        pad = (0, -width % multiple, 0, -height % multiple)
        mean = torch.cat([z0, z1], dim=-1).mean(dim=(2, 3), keepdim=True)
        features0 = self._encode(F.pad(z0 - mean, pad, mode="replicate") if any(pad) else z0 - mean)
        features1 = self._encode(F.pad(z1 - mean, pad, mode="replicate") if any(pad) else z1 - mean)

        flow_t0 = flow_t1 = features = head = None
        level_flows = []
        for level in reversed(range(self.levels)):
            f0, f1 = features0[level], features1[level]
            time_map = t.view(batch, 1, 1, 1).expand(batch, 1, *f0.shape[-2:])
            if flow_t0 is None:
                inputs = [f0, f1, time_map]
            else:
                flow_t0, flow_t1 = _upsample_flow(flow_t0, 2), _upsample_flow(flow_t1, 2)
                features = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
                inputs = [features, warp_by_flow(f0, flow_t0), warp_by_flow(f1, flow_t1), flow_t0, flow_t1, time_map]
            features, head = self.decoders[level](torch.cat(inputs, dim=1))
            flow_t0 = head[:, 0:2] if flow_t0 is None else flow_t0 + head[:, 0:2]
            flow_t1 = head[:, 2:4] if flow_t1 is None else flow_t1 + head[:, 2:4]
            both = _upsample_flow(torch.cat([flow_t0, flow_t1], dim=1), 2**level)
            level_flows.append(both[..., :height, :width])

        flow_t0, flow_t1 = flow_t0[..., :height, :width], flow_t1[..., :height, :width]
        mask = torch.sigmoid(head[:, 4:5, :height, :width])
        residual = head[:, 5:, :height, :width]
        frame = mask * warp_by_flow(z0, flow_t0) + (1 - mask) * warp_by_flow(z1, flow_t1) + residual
        return LatentFlowOutput(flow_t0=flow_t0, flow_t1=flow_t1, mask=mask, residual=residual, frame=frame,
                                level_flows=tuple(level_flows))

    def _encode(self, latents: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], latents
        for level in self.encoder:
            x = level(x)
            features.append(x)
        return features


def load_latent_flow(path: str | Path, key: str, dtype: torch.dtype = torch.float32) -> LatentFlowNet:
    """A LatentFlowNet directory (what `stylevid train latent_flow` exports as <run>/latent_flow/), or a hub id;
    anything else is one line naming `key`."""
    import json

    from .components import load_component

    local = Path(str(path)).expanduser()
    config = local / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text()).get("_class_name")
        except ValueError:
            raise UserInputError(f"{key}={local}: config.json is not JSON") from None
        if name != LatentFlowNet.__name__:
            raise UserInputError(f"{key}={local} holds a {name}, not a LatentFlowNet (stylevid train latent_flow exports one)")
    return load_component(str(path), key=key, what="a LatentFlowNet directory", pretrained=LatentFlowNet.from_pretrained,
                          hint="<LatentFlowNet directory, e.g. <run>/latent_flow>", torch_dtype=dtype)
