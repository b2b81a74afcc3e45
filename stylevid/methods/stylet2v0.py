"""StyleT2V0: zero-shot video guided by text and a style image (StyleT2V0 paper, Section 4, eqs. 7-9).

Text2Video-Zero (`methods/t2v_zero.py`) runs unchanged, with two additions:
1. the style image is encoded by the VAE and DDIM-inverted, giving its latent at every denoising timestep;
   that latent rides along as an extra batch row, so its queries Q_r and keys K_r are computed by the same
   UNet at the same timestep as the frames';
2. the self-attention layers get the shared AdaIN attention of `StyleSharedAttnProcessor`:
   Q̂_i = AdaIN(Q_i, Q_r) (eq. 7), K = AdaIN(K_1, K_r), V = V_1 (eq. 8), softmax(Q̂ Kᵀ/√d) V (eq. 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..attention import StyleSharedAttnProcessor, StyleSharing, layer_selected
from ..errors import UserInputError
from ..progress import StageReporter
from ..sampling.inversion import ddim_invert
from ..sampling.vae import encode_images
from .t2v_zero import Control, ExtraRows, VideoOutput, ZeroShotSettings, ZeroShotVideo


@dataclass
class StyleSettings:
    """How the style image steers generation; see conf/method/stylet2v0.yaml for the reasoning of defaults."""

    image: str
    strength: float = 1.0
    layers: Sequence[str] = field(default_factory=lambda: ["all"])
    adain_queries: bool = True
    adain_keys: bool = True
    attend_to_reference: bool = False
    reference_score_shift: float = 0.0
    prompt: str = ""  # text used to invert the style image (e.g. "a painting"); empty = unconditional


def load_style_image(path: str, height: int, width: int) -> np.ndarray:
    """The style image as uint8 (height, width, 3): scaled so it covers the frame, then centre-cropped."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except FileNotFoundError:
        raise UserInputError(f"style image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserInputError(f"style image {path} cannot be read as an image ({error.__class__.__name__})") from None
    scale = max(height / image.height, width / image.width)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def generate(
    pipe, settings: ZeroShotSettings, style: StyleSettings, reporter: StageReporter | None = None, control: Control | None = None
) -> VideoOutput:
    reporter = reporter or StageReporter()
    settings.validate()
    if not 0.0 <= style.strength <= 1.0:
        raise UserInputError(f"style.strength must be in [0, 1], got {style.strength}")
    image = load_style_image(style.image, settings.height, settings.width)
    if style.strength == 0:
        # No style to share: skip the inversion and the extra row, which would only cost time. The result is
        # Text2Video-Zero's, bit for bit.
        return ZeroShotVideo(pipe, reporter)(settings, control=control)
    device = pipe._execution_device

    # 1. The style image's latent at every timestep, by DDIM inversion with the style prompt.
    style_embeds, _ = pipe.encode_prompt(style.prompt, device, 1, False)
    with reporter.stage("style inversion", total=settings.steps):
        clean = encode_images(pipe.vae, image[None]).to(style_embeds.dtype)
        trajectory = ddim_invert(pipe.unet, pipe.scheduler, clean, style_embeds, settings.steps, on_step=lambda i: reporter.advance())
    known = torch.tensor(sorted(trajectory))

    def style_latents_at(timestep: int) -> torch.Tensor:
        if timestep in trajectory:
            return trajectory[timestep]
        # A schedule whose timesteps differ from the inverse scheduler's: use the nearest inverted level.
        return trajectory[int(known[(known - timestep).abs().argmin()])]

    # One style row serves both guidance branches, under the style prompt it was inverted with.
    extra = ExtraRows(latents_at=style_latents_at, embeds=style_embeds)

    # 2. Shared AdaIN attention in the selected self-attention layers; plain cross-frame attention elsewhere.
    def processor_for(layer: str, groups: int) -> StyleSharedAttnProcessor:
        sharing = StyleSharing(
            strength=style.strength if layer_selected(layer, style.layers) else 0.0,
            adain_queries=style.adain_queries,
            adain_keys=style.adain_keys,
            attend_to_reference=style.attend_to_reference,
            reference_score_shift=style.reference_score_shift,
        )
        return StyleSharedAttnProcessor(sharing, num_groups=groups)

    return ZeroShotVideo(pipe, reporter)(settings, extra_rows=extra, processor_for=processor_for, control=control)
