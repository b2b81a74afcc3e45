"""VideoGen's refinement network for temporal super-resolution (paper Section 3.3): "we next send each warped
representation to a denoising diffusion network as a condition to get a refined representation".

The paper gives no architecture and no text condition for it, so it is diffusers' unconditional `UNet2DModel`
whose input is the noisy latent concatenated with the coarse (warped) in-between latent: 2 x 4 = 8 channels in,
4 out (ε or v, as `conf/diffusion/` trains it). One image at a time: the in-between frame is decided by its two
neighbours through the coarse latent, not by attention across frames.

A trained refiner is a diffusers directory: the UNet's `config.json` + `diffusion_pytorch_model.safetensors`, and
beside them the DDIM `scheduler_config.json` of the noise schedule and prediction type it was trained with, so
that sampling cannot pair it with another one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel

from ..errors import UserInputError

LATENT_CHANNELS = 4  # SD's latent space
# SD latents are 64x64 at 512 px: four levels (64, 32, 16, 8), self-attention at the two coarsest.
DEFAULT_REFINER = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "attention_head_dim": 64,
    "attention": (False, False, True, True),
}
TINY_REFINER = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
                "attention": (False, True)}


def tsr_refiner_unet(
    block_out_channels: tuple[int, ...] = DEFAULT_REFINER["block_out_channels"],
    *,
    layers_per_block: int = DEFAULT_REFINER["layers_per_block"],
    norm_num_groups: int = DEFAULT_REFINER["norm_num_groups"],
    attention_head_dim: int = DEFAULT_REFINER["attention_head_dim"],
    attention: tuple[bool, ...] | None = None,
    latent_channels: int = LATENT_CHANNELS,
    sample_size: int = 64,
) -> UNet2DModel:
    """A fresh refiner UNet: in_channels = 2 x latent_channels (noisy latent, coarse latent), out = latent_channels.

    `attention[i]`: self-attention in level i (default: none but the two coarsest levels). `attention_head_dim` is
    the head *dimension* (diffusers' UNet2DModel: heads = channels // it).
    """
    channels, attention = check_refiner_sizes(block_out_channels, norm_num_groups, attention_head_dim, attention)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=int(sample_size),
        in_channels=2 * int(latent_channels),
        out_channels=int(latent_channels),
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=int(layers_per_block),
        norm_num_groups=int(norm_num_groups),
        attention_head_dim=int(attention_head_dim),
        add_attention=any(attention),  # the mid block's attention when any level has it
    )


def check_refiner_sizes(block_out_channels, norm_num_groups: int, attention_head_dim: int,
                        attention=None) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(widths, attention flags) when the sizes make a UNet2DModel; else one line naming the tsr_refiner.* key.
    attention None: self-attention in the two coarsest levels only."""
    channels = tuple(int(c) for c in block_out_channels)
    if not channels or min(channels) < 1:
        raise UserInputError(f"tsr_refiner.block_out_channels must be a list of positive widths, got {list(channels)}")
    attention = tuple(bool(a) for a in attention) if attention is not None else tuple(
        i >= len(channels) - 2 and len(channels) > 1 for i in range(len(channels)))
    if len(attention) != len(channels):
        raise UserInputError(f"tsr_refiner.attention needs one true/false per level of tsr_refiner.block_out_channels "
                             f"({len(channels)}), got {len(attention)}")
    if any(c % int(norm_num_groups) for c in channels):
        raise UserInputError(f"tsr_refiner.norm_num_groups={norm_num_groups} must divide every width of "
                             f"tsr_refiner.block_out_channels={list(channels)}")
    if any(a and c % int(attention_head_dim) for a, c in zip(attention, channels)):
        raise UserInputError(f"tsr_refiner.attention_head_dim={attention_head_dim} must divide the width of every level "
                             f"with attention ({list(channels)})")
    return channels, attention


def refiner_scheduler(training_scheduler) -> DDIMScheduler:
    """The DDIM sampler of the schedule and prediction type a refiner trained with (a DDPMScheduler's config), with
    Stable Diffusion's DDIM settings (no alpha_1 = 1, steps offset by 1)."""
    return DDIMScheduler.from_config(training_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def save_tsr_refiner(directory: str | Path, unet: UNet2DModel, scheduler: DDIMScheduler) -> None:
    directory = Path(directory)
    unet.save_pretrained(str(directory), safe_serialization=True)
    scheduler.save_pretrained(str(directory))


def load_tsr_refiner(path: str | Path, key: str, dtype: torch.dtype = torch.float32) -> tuple[UNet2DModel, DDIMScheduler]:
    """(UNet, DDIM scheduler) from a refiner directory (`stylevid train tsr_refiner` exports <run>/tsr_refiner/);
    anything else is one line naming `key`."""
    from .components import load_component

    local = Path(str(path)).expanduser()
    if local.is_dir():
        try:
            config = json.loads((local / "config.json").read_text())
        except (OSError, ValueError):
            raise UserInputError(f"{key}={local} has no readable config.json; pass a tsr_refiner directory") from None
        if config.get("_class_name") != UNet2DModel.__name__ or config.get("in_channels") != 2 * config.get("out_channels", 0):
            raise UserInputError(f"{key}={local} is not a temporal-SR refiner (a UNet2DModel taking 2 x its output channels)")
        if not (local / DDIMScheduler.config_name).is_file():
            raise UserInputError(f"{key}={local} has no {DDIMScheduler.config_name}: the sampler it was trained for is unknown")
    unet = load_component(str(path), key=key, what="a tsr_refiner directory", pretrained=UNet2DModel.from_pretrained,
                          hint="<tsr_refiner directory, e.g. <run>/tsr_refiner>", torch_dtype=dtype)
    scheduler = load_component(str(path), key=key, what="a tsr_refiner directory", pretrained=DDIMScheduler.from_pretrained,
                               required_file=DDIMScheduler.config_name, hint="<tsr_refiner directory>")
    return unet, scheduler
