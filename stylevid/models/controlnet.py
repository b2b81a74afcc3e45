"""ControlNet weights: SD 1.5 presets, hub ids, local directories, single files, and a tiny one for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel

from ..errors import UserInputError
from .loading import HUB_ID
from .weight_files import check_single_file

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
    local = Path(str(path)).expanduser()
    try:
        if local.is_dir():
            return ControlNetModel.from_pretrained(str(local), torch_dtype=dtype, local_files_only=True)
        if local.is_file():
            check_single_file(local, "controlnet.path", allow_pickle)  # by content: a name can mislead
            return ControlNetModel.from_single_file(str(local), torch_dtype=dtype)
        if str(path).startswith((".", "/", "~")) or not HUB_ID.match(str(path)):
            raise UserInputError(f"controlnet path {path} for {kind} does not exist")
        return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype)
    except UserInputError:
        raise
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise UserInputError(
            f"{kind} ControlNet {path} could not be loaded: {reason[:160]} — offline, pass "
            f"condition.controls.{kind}.controlnet=<local directory> (or controlnet.path= with one condition)"
        ) from None
