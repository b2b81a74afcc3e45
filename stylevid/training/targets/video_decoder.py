"""`video_decoder`: VideoGen's video decoder (paper Sections 3.4 and 3.5, "Video decoder").

The decoder is SD's image decoder with a temporal convolution after each 2-D convolution and a temporal attention
after each spatial attention (`models.video_decoder.VideoDecoder.from_vae`): its 2-D weights start from the SD
decoder, its temporal layers as the identity. Training clips are unlabeled videos (data=folder | webvid | toy;
captions are never read):
"we use the image encoder in StableDiffusion to extract video latent representations. We apply degradations (adding
noise, blurring, and compression), which are introduced in BSRGAN, to the video, and extract the latent
representations. The target video is still the original video." So for every clip x:

    x̃ = degrade(x)             one BSRGAN-style draw per clip (`data.degrade`), from the step's generator
    z  = E(x̃)                  frozen SD encoder, frame by frame: posterior sample (or mean), unscaled
    L  = w₁ |D(z) - x|₁ + w₂ |D(z) - x|²   on pixels in [-1, 1]

No perceptual (LPIPS) or adversarial term, which SD's own autoencoder training adds: both need pretrained networks
(VGG/AlexNet features, a discriminator) that cannot be downloaded here; the weights of the two pixel terms are
`video_decoder.l1_weight` / `mse_weight`. `video_decoder.trainable=all` trains the 2-D weights too (the paper
initialises them from the SD decoder, it does not freeze them); `temporal` trains only the new layers.
Weights are saved and exported as a diffusers `VideoDecoder` directory (`<run>/video_decoder/`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ... import values
from ...data.degrade import degrade_clip, draw_degradation
from ...data.sources import check_video_source, clip_dataset
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...models.loading import load_pipeline
from ...models.video_decoder import VideoDecoder
from ...models.videogen_weights import load_video_decoder
from ...sampling.vae import pixels_from_uint8
from ..checkpoint import model_identity, plain
from . import Step, TrainingTarget, register

TRAINABLE = ("all", "temporal")
LATENTS = ("sample", "mean")
# The VAE's config entries the decoder's weights depend on (another geometry cannot take them).
VAE_ESSENTIALS = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "up_block_types",
                  "scaling_factor")


def uint8_clips(pixels: torch.Tensor) -> np.ndarray:
    """(B, F, 3, H, W) pixels in [-1, 1] -> uint8 (B, F, H, W, 3), what the degradations take (exact for the
    dataset's clips, which were uint8 frames)."""
    return ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


@register
class VideoDecoderTarget(TrainingTarget):
    name = "video_decoder"
    description = ("VideoGen's video decoder (SD decoder + temporal conv/attention): latents of degraded clips -> "
                   "the clean clips")
    example = "data.video_folder=clips/ video_decoder.trainable=all video_decoder.degradation_strength=1.0"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_video_source(cfg, cls.name)  # first: an image data config has no frames to check
        settings = cfg.video_decoder
        if settings.trainable not in TRAINABLE:
            raise UserInputError(f"video_decoder.trainable must be one of {', '.join(TRAINABLE)}; got {settings.trainable!r}")
        if settings.latents not in LATENTS:
            raise UserInputError(f"video_decoder.latents must be one of {', '.join(LATENTS)}; got {settings.latents!r}")
        values.number(settings.degradation_strength, "video_decoder.degradation_strength", 0, 1)
        l1 = values.number(settings.l1_weight, "video_decoder.l1_weight", 0)
        mse = values.number(settings.mse_weight, "video_decoder.mse_weight", 0)
        if l1 == 0 and mse == 0:
            raise UserInputError("video_decoder.l1_weight and video_decoder.mse_weight are both 0: nothing to train on")
        kernel = values.integer(settings.temporal_kernel_size, "video_decoder.temporal_kernel_size", 1)
        if kernel % 2 == 0:
            raise UserInputError(f"video_decoder.temporal_kernel_size must be odd (frames in, same frames out), got {kernel}")
        values.integer(settings.temporal_attention_heads, "video_decoder.temporal_attention_heads", 1)
        if not isinstance(settings.temporal_attention, bool):
            raise UserInputError(f"video_decoder.temporal_attention must be true or false, got {settings.temporal_attention!r}")
        if settings.get("init_path") and not Path(str(settings.init_path)).expanduser().is_dir():
            raise UserInputError(f"video_decoder.init_path={settings.init_path} is not a VideoDecoder directory")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        settings = cfg.video_decoder
        self.settings = settings
        self.videos = clip_dataset(cfg, self.name, captions=False)  # before the model: bad data is refused without waiting for it
        # The frozen SD encoder (Section 3.5): the pipeline's VAE, in float32 until the decoder has copied its weights.
        self.vae = load_pipeline(cfg.model, torch.float32).vae
        channels = int(self.vae.config.block_out_channels[-1])
        if settings.get("init_path"):
            self.decoder = self.trained_decoder(str(settings.init_path)).to(device).train()
        else:
            if channels % int(settings.temporal_attention_heads):
                raise UserInputError(f"video_decoder.temporal_attention_heads={settings.temporal_attention_heads} does "
                                     f"not divide the VAE decoder's {channels} mid-block channels")
            self.decoder = VideoDecoder.from_vae(
                self.vae, temporal_attention=bool(settings.temporal_attention),
                temporal_attention_heads=int(settings.temporal_attention_heads),
                temporal_kernel_size=int(settings.temporal_kernel_size),
            ).to(device).train()
        self.vae.requires_grad_(False)
        self.vae.to(device).eval()
        if weight_dtype != torch.float32:
            self.vae.to(dtype=weight_dtype)
        if settings.trainable == "temporal":
            for _, parameter in self.decoder.spatial_parameters():  # frozen image weights at the low precision
                parameter.requires_grad_(False)
                parameter.data = parameter.data.to(weight_dtype)
        self.strength = float(settings.degradation_strength)
        self.l1_weight, self.mse_weight = float(settings.l1_weight), float(settings.mse_weight)

    def trained_decoder(self, path: str) -> VideoDecoder:
        """`video_decoder.init_path`: a trained video decoder to continue from (a longer run, another degradation or
        latent setting, a new domain). Its temporal layers' settings win over video_decoder.temporal_*; its 2-D
        layers must be those of this VAE's decoder."""
        decoder = load_video_decoder(path, self.vae, "video_decoder.init_path")
        for key in ("latent_channels", "block_out_channels", "layers_per_block", "norm_num_groups"):
            theirs, ours = plain(decoder.config.get(key)), plain(self.vae.config.get(key))
            if theirs != ours:
                raise UserInputError(f"video_decoder.init_path={path} decodes {key}={theirs}; the VAE of this model= "
                                     f"has {ours}")
        return decoder

    @property
    def model(self):
        return self.decoder

    def enable_gradient_checkpointing(self) -> None:
        # the decoder's own: every resnet, attention pair and upsampler (diffusers' VAE checkpoints whole blocks)
        self.decoder.enable_gradient_checkpointing()

    # --- data and loss ----------------------------------------------------------------------------------------

    def dataset(self):
        return self.videos

    def collate(self, items):
        return collate_clips(items)

    def degrade(self, pixels: torch.Tensor, at: Step) -> torch.Tensor:
        """The clips (B, F, 3, H, W) degraded, one draw per clip; every draw from a numpy generator seeded by the
        step's generator, so a resumed run degrades each clip exactly as the uninterrupted one did."""
        rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=at.generator)))
        clips = [degrade_clip(clip, draw_degradation(rng, self.strength), rng) for clip in uint8_clips(pixels)]
        return torch.stack([pixels_from_uint8(clip) for clip in clips])

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, F, 3, H, W) -> unscaled latents (B, C, F, h, w) from the frozen encoder, frame by frame."""
        batch, frames = pixels.shape[:2]
        posterior = self.vae.encode(pixels.flatten(0, 1).to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mean if self.settings.latents == "mean" else posterior.sample(generator=generator)
        return latents.float().unflatten(0, (batch, frames)).transpose(1, 2)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        clean = batch["pixel_values"]  # (B, F, 3, H, W) in [-1, 1]
        with torch.no_grad():
            latents = self.encode(self.degrade(clean, at), at.generator)
        decoded = model(latents).float()  # (B, 3, F, H, W)
        target = clean.to(self.device).transpose(1, 2)
        loss = decoded.new_zeros(())
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(decoded, target)
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(decoded, target)
        return loss

    # --- weights ----------------------------------------------------------------------------------------------

    def write_decoder(self, directory: Path, state_dict) -> None:
        """`state_dict` (gathered, maybe EMA) as a diffusers VideoDecoder directory, without touching the live model."""
        with torch.device("meta"):  # no random initialisation of weights that are replaced at once
            decoder = VideoDecoder.from_config(self.decoder.config)
        decoder.load_state_dict({key: value.detach().cpu() for key, value in state_dict.items()}, strict=True, assign=True)
        decoder.save_pretrained(str(directory), safe_serialization=True)

    def save_weights(self, directory: Path, state_dict) -> None:
        self.write_decoder(directory, state_dict)

    def load_weights(self, directory: Path) -> None:
        loaded = load_video_decoder(str(directory), self.vae, "trainer.resume")
        self.decoder.load_state_dict(loaded.state_dict())

    def export(self, run_dir: Path, state_dict) -> dict:
        self.write_decoder(run_dir / "video_decoder", state_dict)
        return {"diffusers": "video_decoder/"}

    # --- records ----------------------------------------------------------------------------------------------

    def record(self) -> dict:
        base = {**model_identity(self.cfg.model), "vae": {key: plain(self.vae.config.get(key)) for key in VAE_ESSENTIALS}}
        built = self.decoder.config  # the settings', or an init_path decoder's own
        return {"base_model": base, "decoder": {"temporal_attention": bool(built.temporal_attention),
                                                "temporal_attention_heads": int(built.temporal_attention_heads),
                                                "temporal_kernel_size": int(built.temporal_kernel_size),
                                                "trainable": str(self.settings.trainable)}}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        """One line naming the setting when the checkpoint was trained on another model or another decoder."""
        here = self.record()
        base = recorded.get("base_model")
        if base not in (None, here["base_model"]):
            raise UserInputError(f"trainer.resume={path} was trained on another base model ({base.get('path') or base.get('name')}); "
                                 "pass the checkpoint's model= / model.path= to resume it")
        for key, value in (recorded.get("decoder") or {}).items():
            if here["decoder"].get(key) != value:
                raise UserInputError(f"trainer.resume={path} was trained with video_decoder.{key}={value}, this run has "
                                     f"{here['decoder'].get(key)}; pass the checkpoint's settings to resume it")

    def summary(self) -> dict:
        data, settings = self.cfg.data, self.settings
        stride = data.get("stride")
        return {"data": {"name": data.name, "videos": len(self.videos), "frames": int(data.frames),
                         "stride": OmegaConf.to_container(stride) if OmegaConf.is_list(stride) else stride,
                         "size": int(data.size)},
                "video_decoder": {"init_path": str(settings.init_path) if settings.get("init_path") else None,
                                  "degradation_strength": self.strength, "latents": str(settings.latents),
                                  "l1_weight": self.l1_weight, "mse_weight": self.mse_weight,
                                  "trainable": str(settings.trainable),
                                  "trainable_parameters": sum(p.numel() for p in self.trainable_parameters())}}
