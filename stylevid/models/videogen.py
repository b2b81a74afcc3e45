"""VideoGen's reference-guided cascaded latent video diffusion stages (paper Section 3.2, training Section 3.5).

A cascade of three latent video diffusion networks: a base stage at 16x16 latents and 16 frames, then two
spatial super-resolution stages at 32x32 and 64x64. Each is an SD 1.x UNet inflated into the spatio-temporal
layout of `models.inflate.VideoUNet` (a temporal conv after each spatial conv, a temporal attention after each
spatial attention, all starting as the identity), with its conditions:

  * the text, by cross-attention (as LDM);
  * the reference image: its VAE latent at the stage's resolution, concatenated to the input of the first
    frame, zeros concatenated to the other frames (`reference_condition`);
  * for a super-resolution stage, the bilinearly x2-upsampled output of the stage below, concatenated to the
    input of every frame (`upsample_condition`), noise-augmented as cascaded diffusion models do (the paper
    does not say; without it a stage trained on clean encodings meets the lower stage's imperfect samples
    only at inference), with the augmentation level as a further embedded condition;
  * the clip's FPS, embedded and added to the time embedding (as Make-A-Video).

Input channel layout of every stage: [z_t (4) | reference (4)] for the base, [z_t (4) | reference (4) |
upsampled lower stage (4)] for a super-resolution stage; all condition channels of conv_in start at zero, so a
freshly built stage is the image model frame by frame.

A trained stage is a diffusers `save_pretrained` directory of its VideoUNet (`VideoUNet.from_pretrained`
rebuilds it), plus `stage.json` saying which stage of which cascade it is (`StageInfo`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserInputError
from .inflate import VideoUNet, save_video_unet

LATENT_CHANNELS = 4
STAGES = ("base", "sr")
# Extra (concatenated) input channels of each kind of stage: the reference latent; + the upsampled lower stage.
EXTRA_IN_CHANNELS = {"base": LATENT_CHANNELS, "sr": 2 * LATENT_CHANNELS}
STAGE_FILE = "stage.json"


# --- building a stage -------------------------------------------------------------------------------------------


def build_stage(unet2d: UNet2DConditionModel, *, stage: str, frame_position_encoding: bool = True,
                max_frames: int = 32) -> VideoUNet:
    """An SD 1.x image UNet inflated into a VideoGen stage (Section 3.5: "the 2D convolution and spatial attention
    parameters ... initialized from the pretrained Stable Diffusion T2I generation model; the temporal convolution
    and attention layers ... as the identity function").

    stage="base": conv_in takes 8 channels (z_t, reference latent); stage="sr": 12 (z_t, reference latent,
    upsampled lower stage) and a noise-level embedding. Both embed the FPS. Every added part is zero-initialised.
    """
    if stage not in STAGES:
        raise UserInputError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return VideoUNet.inflate(
        unet2d,
        frame_position_encoding=frame_position_encoding,
        max_frames=max_frames,
        extra_in_channels=EXTRA_IN_CHANNELS[stage],
        fps_conditioning=True,
        noise_level_conditioning=stage == "sr",
    )


def stage_kind(unet: VideoUNet) -> str:
    """"base" or "sr", read from the model's config; anything else is not a VideoGen stage."""
    config = unet.config
    for kind, extra in EXTRA_IN_CHANNELS.items():
        if (config.get("extra_in_channels") == extra and config.get("fps_conditioning")
                and bool(config.get("noise_level_conditioning")) == (kind == "sr")):
            return kind
    raise UserInputError(
        f"this VideoUNet is not a VideoGen stage (extra_in_channels={config.get('extra_in_channels')}, "
        f"fps_conditioning={config.get('fps_conditioning')}, noise_level_conditioning={config.get('noise_level_conditioning')})"
    )


def super_resolution_from(lower: VideoUNet) -> VideoUNet:
    """The next super-resolution stage, initialised as the trained stage below it (Section 3.5: "The second
    (third) diffusion network is initialized as the weights of the trained first (second) diffusion network").

    From a base stage: conv_in widened from 8 to 12 input channels (the new ones, for the upsampled lower stage,
    zero) and a zero-initialised noise-level embedding, so at step 0 the new stage computes what the base does on
    its latents and reference. From a super-resolution stage: an exact copy.
    """
    stage_kind(lower)
    return lower.extended(extra_in_channels=EXTRA_IN_CHANNELS["sr"], noise_level_conditioning=True)


# --- the conditions -----------------------------------------------------------------------------------------------


def reference_condition(reference_latent: torch.Tensor | None, frames: int, *,
                        shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The reference channels of the input, (B, 4, F, h, w): the reference latent on frame 0, zeros on the others
    (Section 3.2: "concatenating it with the first-frame representation ..., and concatenating zero
    representations with the representations corresponding to other frames").

    reference_latent: (B, 4, h, w) scaled VAE latent at the stage's resolution, or None (no reference, or dropped):
    all zeros, of `shape` = (B, h, w).
    """
    if frames < 1:
        raise UserInputError(f"frames must be at least 1, got {frames}")
    if reference_latent is None:
        if shape is None:
            raise ValueError("reference_condition(None, ...) needs shape=(batch, height, width)")
        batch, height, width = shape
        return torch.zeros(batch, LATENT_CHANNELS, frames, height, width)
    if reference_latent.ndim != 4 or reference_latent.shape[1] != LATENT_CHANNELS:
        raise UserInputError(f"the reference latent must be (B, {LATENT_CHANNELS}, h, w), got {tuple(reference_latent.shape)}")
    condition = reference_latent.new_zeros(reference_latent.shape[0], LATENT_CHANNELS, frames, *reference_latent.shape[2:])
    condition[:, :, 0] = reference_latent
    return condition


def upsample_condition(low: torch.Tensor, noise_level: torch.Tensor, scheduler, generator: torch.Generator | None
                       ) -> torch.Tensor:
    """The lower stage's latent video as a super-resolution stage's condition: bilinear x2 (Section 3.2), then
    noise-augmented to `noise_level` by the scheduler's forward process (`add_noise`), as cascaded diffusion does.

    low: (B, 4, F, h/2, w/2); noise_level: (B,) integers in [0, T). Level 0 is no augmentation at all (the
    upsampled latents themselves), level n >= 1 is the forward marginal at timestep n. The scheduler's own t=0 is
    skipped on purpose: it still adds noise of std sqrt(1 - ᾱ_0) = 0.03, so "level 0" would not be clean.
    The noise is drawn (on the CPU, from `generator`) even where the level is 0, so the number of draws does not
    depend on the levels. Returns (B, 4, F, h, w).
    """
    if low.ndim != 5:
        raise UserInputError(f"the low-resolution latents must be (B, C, F, h, w), got {tuple(low.shape)}")
    batch, channels, frames, height, width = low.shape
    noise_level = torch.as_tensor(noise_level).reshape(-1).long()
    if noise_level.numel() == 1:
        noise_level = noise_level.expand(batch)
    steps = scheduler.config.num_train_timesteps
    if noise_level.numel() != batch or noise_level.min() < 0 or noise_level.max() >= steps:
        raise UserInputError(f"noise_level must be {batch} integer(s) in [0, {steps}), got {noise_level.tolist()}")
    images = low.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    upsampled = F.interpolate(images.float(), scale_factor=2, mode="bilinear", align_corners=False)
    upsampled = upsampled.reshape(batch, frames, channels, 2 * height, 2 * width).permute(0, 2, 1, 3, 4)
    noise = randn_tensor(upsampled.shape, generator=generator, device=upsampled.device, dtype=upsampled.dtype)
    noised = scheduler.add_noise(upsampled, noise, noise_level.to(upsampled.device))
    clean = (noise_level == 0).to(upsampled.device).view(batch, 1, 1, 1, 1)
    return torch.where(clean, upsampled, noised).to(low.dtype)


# --- a trained stage on disk --------------------------------------------------------------------------------------

# VideoUNet config keys that decide what a stage's weights compute or which inputs it takes.
STAGE_ESSENTIALS = ("in_channels", "extra_in_channels", "fps_conditioning", "noise_level_conditioning",
                    "frame_position_encoding", "max_frames", "block_out_channels", "layers_per_block",
                    "cross_attention_dim", "attention_head_dim", "spatial_attention_heads", "norm_num_groups",
                    "down_block_types", "up_block_types")


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def stage_record(unet: VideoUNet) -> dict:
    """The stage's kind and geometry (what a checkpoint records, so that a resume into another stage is refused)."""
    return {"kind": stage_kind(unet), **{key: _plain(unet.config.get(key)) for key in STAGE_ESSENTIALS}}


@dataclass
class StageInfo:
    """`stage.json` beside a stage's weights: where it sits in the cascade.

    index: 1 for the base, 2 and 3 for the super-resolution stages; latent_size: its latent height = width (16, 32,
    64 in the paper); frames: the clip length it was trained on; base_model: the record of the SD model whose VAE and
    text encoder its inputs come from (`training.checkpoint.base_model_record`).
    """

    index: int
    latent_size: int
    frames: int
    base_model: dict = field(default_factory=dict)


def save_stage(directory: str | Path, unet: VideoUNet, info: StageInfo, state_dict: dict[str, torch.Tensor] | None = None
               ) -> Path:
    """Write a stage: `unet` with `state_dict` (default: its own weights) as `save_video_unet` lays it out, plus
    `stage.json`."""
    stage_kind(unet)
    directory = save_video_unet(directory, unet, state_dict)
    (directory / STAGE_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return directory


def resolve_stage_dir(path: str | Path, key: str = "videogen.init") -> Path:
    """The stage directory `path` names: a stage directory itself, a training run (its `videogen_stage/`) or a
    training checkpoint (its `weights/`)."""
    path = Path(str(path)).expanduser()
    for candidate in (path, path / "videogen_stage", path / "weights"):
        if (candidate / "config.json").is_file() and (candidate / STAGE_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserInputError(f"{key}={path} does not exist")
    raise UserInputError(f"{key}={path} is not a VideoGen stage (no config.json and {STAGE_FILE} in it, "
                         "its videogen_stage/ or its weights/)")


def read_stage_info(path: str | Path, key: str = "videogen.init") -> StageInfo:
    directory = resolve_stage_dir(path, key)
    try:
        return StageInfo(**json.loads((directory / STAGE_FILE).read_text()))
    except (ValueError, TypeError) as error:
        raise UserInputError(f"{key}: {directory / STAGE_FILE} is not a stage description ({type(error).__name__})") from None


def load_stage(path: str | Path, key: str = "videogen.init") -> VideoUNet:
    """A stage saved by `save_stage` (or any `VideoUNet.save_pretrained` directory with a stage.json), exactly."""
    from .components import load_component

    directory = resolve_stage_dir(path, key)
    unet = load_component(str(directory), key=key, pretrained=VideoUNet.from_pretrained, what="a VideoGen stage directory")
    stage_kind(unet)
    # safetensors hands back tensors at offsets inside one buffer (not 64-byte aligned); BLAS then takes another
    # kernel path and the outputs differ from the saved model's by ~1e-6. A copy gives aligned storage, so a loaded
    # stage computes bit for bit what the saved one did.
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.data = parameter.data.clone()
    return unet.eval()
