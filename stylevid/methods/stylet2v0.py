"""StyleT2V0: zero-shot video guided by text and a style image (StyleT2V0 paper, Section 4, eqs. 7-9).

Text2Video-Zero (`methods/t2v_zero.py`) runs unchanged, with two additions:
1. the style image is encoded by the VAE and DDIM-inverted, giving its latent at every denoising timestep;
   that latent rides along as an extra batch row, so its queries Q_r and keys K_r are computed by the same
   UNet at the same timestep as the frames' (`reference="clean"` instead carries the clean latent at every
   step, as reference-attention methods such as Animate Anyone's ReferenceNet do: no inversion);
2. the self-attention layers get the shared AdaIN attention of `StyleSharedAttnProcessor`:
   Q̂_i = AdaIN(Q_i, Q_r) (eq. 7), K = AdaIN(K_1, K_r), V = V_1 (eq. 8), softmax(Q̂ Kᵀ/√d) V (eq. 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attention import StyleSharedAttnProcessor, StyleSharing, layer_selected, self_attention_layers
from ..errors import UserInputError
from ..io.video_input import read_image
from ..progress import StageReporter
from ..sampling.inversion import ddim_invert
from ..sampling.vae import encode_images
from .t2v_zero import Control, ExtraRows, VideoOutput, ZeroShotSettings, ZeroShotVideo


REFERENCES = ("inverted", "clean")


@dataclass
class StyleSettings:
    """How the style image steers generation; see conf/method/stylet2v0.yaml for the reasoning of defaults."""

    image: str
    strength: float = 1.0
    layers: Sequence[str] = field(default_factory=lambda: ["all"])
    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    attend_to_reference: bool = False
    reference_score_shift: float = 0.0
    prompt: str = ""  # text used to invert the style image (e.g. "a painting"); empty = unconditional
    # The style row's latent: "inverted" (the paper's reading: its DDIM-inversion latent at each timestep, as
    # StyleAligned does for a real reference) or "clean" (the encoded image itself at every timestep, as
    # reference-attention methods do; no inversion, so N fewer UNet passes).
    reference: str = "inverted"

    def __post_init__(self) -> None:
        # `method.layers=up_blocks` on the command line is one string: a selector, not a list of letters.
        self.layers = [self.layers] if isinstance(self.layers, str) else list(self.layers)

    def validate(self) -> None:
        """The checks that need no model, so a bad value fails before anything is loaded or written."""
        if not 0.0 <= self.strength <= 1.0:  # also refuses NaN
            raise UserInputError(f"method.strength (style strength) must be in [0, 1], got {self.strength}")
        if self.reference not in REFERENCES:
            raise UserInputError(f"method.reference must be {' or '.join(REFERENCES)}, got {self.reference!r}")


def check_layers(unet, layers: Sequence[str]) -> None:
    """Every selector in `method.layers` must pick at least one self-attention layer of this UNet.

    A typo (`up_block`) would otherwise select nothing and quietly turn style sharing off. An empty list is
    allowed: it selects no layer on purpose (the style row is carried along but shared nowhere).
    """
    names = self_attention_layers(unet)
    unmatched = [selector for selector in layers if not any(layer_selected(name, [selector]) for name in names)]
    if unmatched:
        levels = sorted({name.split(".attentions")[0] for name in names})  # down_blocks.0, mid_block, up_blocks.1...
        raise UserInputError(
            f"method.layers: {', '.join(repr(s) for s in unmatched)} matches no self-attention layer of this model; "
            f"use all, down_blocks, mid_block, up_blocks, or one level: {', '.join(levels)}"
        )


def load_style_image(path: str, height: int, width: int) -> np.ndarray:
    """The style image as uint8 (height, width, 3): scaled so it covers the frame, then centre-cropped.

    Read by the same `read_image` as `stylevid invert input=<image>`, so that task reproduces the style
    latents used here (same decoding, same resize).
    """
    return read_image(path, height, width, fit="crop", label="style image")


def generate(
    pipe, settings: ZeroShotSettings, style: StyleSettings, reporter: StageReporter | None = None, control: Control | None = None
) -> VideoOutput:
    reporter = reporter or StageReporter()
    settings.validate()
    style.validate()
    check_layers(pipe.unet, style.layers)
    image = load_style_image(style.image, settings.height, settings.width)
    if style.strength == 0:
        # No style to share: skip the inversion and the extra row, which would only cost time. The result is
        # Text2Video-Zero's, bit for bit.
        return ZeroShotVideo(pipe, reporter)(settings, control=control)
    device = pipe._execution_device

    # 1. The style image's latent at every timestep: by DDIM inversion with the style prompt, or the clean latent.
    style_embeds, _ = pipe.encode_prompt(style.prompt, device, 1, False)
    clean = encode_images(pipe.vae, image[None], device).to(style_embeds.dtype)
    trajectory = {}
    if style.reference == "inverted":
        with reporter.stage("style inversion", total=settings.steps):
            trajectory = ddim_invert(pipe.unet, pipe.scheduler, clean, style_embeds, settings.steps, on_step=lambda i: reporter.advance())
    known = torch.tensor(sorted(trajectory))

    def style_latents_at(timestep: int) -> torch.Tensor:
        if not trajectory:  # reference="clean"
            return clean
        if timestep in trajectory:
            return trajectory[timestep]
        # A schedule whose timesteps differ from the inverse scheduler's: use the nearest inverted level.
        return trajectory[int(known[(known - timestep).abs().argmin()])]

    # One style row serves both guidance branches, under the style prompt (the one it was inverted with).
    extra = ExtraRows(latents_at=style_latents_at, embeds=style_embeds)

    # 2. Shared AdaIN attention in the selected self-attention layers; plain cross-frame attention elsewhere.
    def processor_for(layer: str, groups: int) -> StyleSharedAttnProcessor:
        sharing = StyleSharing(
            strength=style.strength if layer_selected(layer, style.layers) else 0.0,
            adain_queries=style.adain_queries,
            adain_keys=style.adain_keys,
            adain_values=style.adain_values,
            attend_to_reference=style.attend_to_reference,
            reference_score_shift=style.reference_score_shift,
        )
        return StyleSharedAttnProcessor(sharing, num_groups=groups)

    return ZeroShotVideo(pipe, reporter)(settings, extra_rows=extra, processor_for=processor_for, control=control)
