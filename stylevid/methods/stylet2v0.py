"""StyleT2V0: zero-shot video guided by text and a style image (StyleT2V0 paper, Section 4, eqs. 7-9).

Text2Video-Zero (`methods/t2v_zero.py`) runs unchanged, with two additions:
1. the style image is encoded by the VAE and DDIM-inverted, giving its latent at every denoising timestep;
   that latent rides along as an extra batch row, so its queries Q_r and keys K_r are computed by the same
   UNet at the same timestep as the frames' (`reference="clean"` instead carries the clean latent at every
   step, as reference-attention methods such as Animate Anyone's ReferenceNet do: no inversion);
2. the self-attention layers get the shared AdaIN attention of `StyleSharedAttnProcessor`:
   Q̂_i = AdaIN(Q_i, Q_r) (eq. 7), K = AdaIN(K_1, K_r), V = V_1 (eq. 8), softmax(Q̂ Kᵀ/√d) V (eq. 9).

`method.sharing` chooses between two readings of the paper (SHARING_PRESETS): `paper`, eqs. 7-9 exactly as
written, and the default `aligned`, Figure 2's "keys and values are also adapted using AdaIN" plus StyleAligned's
attention to the style image, the one that measurably transfers style on the toy world.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from ..attention import StyleSharedAttnProcessor
from ..conditions.control import Control
from ..conditions.style import (  # noqa: F401  (the style settings are part of this method's interface)
    DEFAULT_SHARING,
    SHARING_KEYS,
    SHARING_PRESETS,
    StyleSettings,
    check_layers,
    check_style_image,
    load_style_image,
)
from ..progress import StageReporter
from ..sampling.inversion import ddim_invert, latents_at_timestep
from ..sampling.vae import encode_images
from .base import VideoMethod, VideoOutput, register
from .t2v_zero import ExtraRows, ZeroShotModels, ZeroShotSettings, ZeroShotVideo, load_zero_shot, zero_shot_settings


@dataclass
class StyleT2V0Settings(ZeroShotSettings):
    """Text2Video-Zero's settings and the style image's (`StyleSettings`: image, sharing preset and overrides)."""

    style: StyleSettings | None = None


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
        output = ZeroShotVideo(pipe, reporter)(settings, control=control)
        output.inputs = [image]
        return output
    device = pipe._execution_device

    # 1. The style image's latent at every timestep: by DDIM inversion with the style prompt, or the clean latent.
    style_embeds, _ = pipe.encode_prompt(style.prompt, device, 1, False)
    clean = encode_images(pipe.vae, image[None], device).to(style_embeds.dtype)
    trajectory = {}
    if style.reference == "inverted":
        with reporter.stage("style inversion", total=settings.steps):
            trajectory = ddim_invert(pipe.unet, pipe.scheduler, clean, style_embeds, settings.steps, on_step=lambda i: reporter.advance())
    style_latents_at = latents_at_timestep(trajectory, clean)

    # One style row serves both guidance branches, under the style prompt (the one it was inverted with).
    extra = ExtraRows(latents_at=style_latents_at, embeds=style_embeds)

    # 2. Shared AdaIN attention in the selected self-attention layers; plain cross-frame attention elsewhere.
    def processor_for(layer: str, groups: int) -> StyleSharedAttnProcessor:
        return StyleSharedAttnProcessor(style.sharing_for(layer), num_groups=groups)

    output = ZeroShotVideo(pipe, reporter)(settings, extra_rows=extra, processor_for=processor_for, control=control)
    output.inputs = [image]
    return output


@register
class StyleT2V0(VideoMethod):
    name = "stylet2v0"
    description = "StyleT2V0: Text2Video-Zero guided by a style image through AdaIN shared attention (style=...)"
    supports = frozenset({"style", "style_prompt", "condition", "condition_motion_field", "condition_noise_per_frame", "cpu_offload", "vae_slicing"})
    example = 'prompt="a horse galloping on a beach" style=vangogh.png condition=pose condition.video=horse.mp4'

    def settings(self, cfg: DictConfig) -> StyleT2V0Settings:
        video = zero_shot_settings(cfg)
        style = StyleSettings.from_config(cfg)
        style.validate()
        check_style_image(style.image, video.height, video.width)
        return StyleT2V0Settings(**vars(video), style=style)

    def load(self, cfg, settings, device, dtype, conditions) -> ZeroShotModels:
        models = load_zero_shot(cfg, settings, device, dtype, conditions)
        check_layers(models.pipe.unet, settings.style.layers)  # a selector must match a layer of this model
        return models

    def generate(self, loaded: ZeroShotModels, settings: StyleT2V0Settings, reporter: StageReporter) -> VideoOutput:
        return generate(loaded.pipe, settings, settings.style, reporter, control=loaded.control)

    def record(self, cfg, settings: StyleT2V0Settings) -> dict:
        return {"t0": settings.t0, "t1": settings.t1, "style": settings.style.image, "style_sharing": settings.style.record()}
