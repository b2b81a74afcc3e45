"""ControlNet weights: SD 1.5 presets, hub ids, local directories, single files, and a tiny one for tests."""

from __future__ import annotations

import functools

import torch
from diffusers import ControlNetModel

from .components import load_component

# The ControlNet 1.0 models for SD 1.5 that Text2Video-Zero and StyleT2V0 use.
CONTROLNET_PRESETS = {
    "canny": "lllyasviel/sd-controlnet-canny",
    "depth": "lllyasviel/sd-controlnet-depth",
    "pose": "lllyasviel/sd-controlnet-openpose",
}


def tiny_controlnet(unet, seed: int = 0) -> ControlNetModel:
    """A ControlNet shaped for `unet` (the tiny UNet), with random instead of zero output convolutions.

    A real ControlNet starts with zero convolutions and learns them; an untrained one with zeros would
    have no effect at all, so tests could not tell whether the condition reaches the UNet. The map's own
    embedding ends in a zero convolution too; it and the embedding's other convolutions get He
    initialisation, which keeps the map's signal alive through the embedding's seven layers (PyTorch's
    default initialisation shrinks it ~10^4-fold there).
    """
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            torch.nn.init.kaiming_normal_(conv.weight)
            conv.bias.zero_()
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.reset_parameters()  # PyTorch's default initialisation instead of zeros
    return controlnet.eval()


def load_controlnet(path: str, kind: str, unet, dtype: torch.dtype, allow_pickle: bool = False) -> ControlNetModel:
    """`path` is `tiny`, `default` (the SD 1.5 preset for `kind`), a hub id, a local directory or a file."""
    if path == "tiny":
        return tiny_controlnet(unet).to(dtype=dtype)
    if path in (None, "", "default"):
        path = CONTROLNET_PRESETS[kind]
    return load_component(
        str(path),
        key="controlnet.path",
        what="a diffusers ControlNet",
        pretrained=ControlNetModel.from_pretrained,
        single_file=functools.partial(ControlNetModel.from_single_file, torch_dtype=dtype),
        allow_pickle=allow_pickle,
        required_file="config.json",
        hint=f"<local ControlNet directory or .safetensors file> (condition.controls.{kind}.controlnet= with several conditions)",
        torch_dtype=dtype,
    )
