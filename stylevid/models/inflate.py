"""Inflating an SD 1.x image UNet into a spatio-temporal video UNet (VideoGen, Gen-1).

The video UNet is diffusers' `UNet3DConditionModel` layout (ModelScope's): after `conv_in` a temporal
transformer `transformer_in`, and at every level resnet -> `TemporalConvLayer` -> spatial
`Transformer2DModel` -> `TransformerTemporalModel`. Frames travel in the batch axis, so the spatial layers
see (batch*frames, C, H, W) exactly as the image UNet does, and every spatial weight keeps its name: the
inflation is a copy under the same keys, plus new temporal layers that start as the identity.

What `UNet3DConditionModel` gets wrong for an SD checkpoint, and what `VideoUNet` does about it:
  * its `attention_head_dim` is a head *dimension* (spatial heads = channels // it), while SD 1.x's
    `attention_head_dim: 8` means 8 *heads* at every level; a tuple breaks `transformer_in`. The video UNet
    is built with one int head dimension that divides every level's width (so all projection shapes fit)
    and then every spatial attn1/attn2 gets the image model's head count and softmax scale back
    (`spatial_attention_heads` in the config, so `from_pretrained` rebuilds the same model);
  * its spatial transformers use linear `proj_in`/`proj_out`; SD 1.x uses 1x1 convs: [C, C, 1, 1] weights
    are reshaped to [C, C] (the same map, applied per pixel);
  * `TemporalConvLayer` starts as the identity (last conv zeroed) but `TransformerTemporalModel.proj_out`
    does not: it is zeroed here (`transformer_in` and every temporal transformer), so step 0 is the image
    model frame by frame. diffusers' temporal attention also has no notion of frame order; an optional
    learnable, zero-initialised frame-position encoding is added after each temporal `proj_in`;
  * `num_frames=1` is not the image model (the temporal conv keeps its centre tap and bias, temporal
    attention still applies its V/out projections once trained): `image_mode=True` bypasses every temporal
    layer, so joint image/video training sees the untouched image path;
  * no gradient checkpointing (`_supports_gradient_checkpointing = False`, and the blocks' forwards ignore
    the flag): the forward here walks the blocks itself and checkpoints each resnet, temporal conv, spatial
    transformer and temporal transformer when enabled;
  * `conv_in` can be widened by zero-initialised input channels for concatenated conditions (a reference
    latent, an upsampled lower stage, a depth map), so they change nothing until trained;
  * scalar conditions beside the timestep: the clip's FPS (Make-A-Video, VideoGen Section 3.2: "use FPS as a
    condition and inject its embedding into each diffusion model") and, for a cascaded super-resolution
    stage, the noise-augmentation level of its upsampled low-resolution input (cascaded diffusion). UNet3D's
    own hook (`time_cond_proj_dim`, a `cond_proj` inside the time MLP) is not zero-initialised and would
    collide with an image UNet's own `cond_proj`; here each scalar gets the time embedding's sinusoidal
    projection and its own `TimestepEmbedding` MLP, added to the time embedding, as I2VGen-XL's
    `fps_embedding` does, but with the MLP's last layer zeroed so a fresh model is still the image model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from diffusers import UNet2DConditionModel, UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device
from torch import nn

from ..errors import UserInputError

# Image blocks and their video counterparts (same sub-module names, plus temp_convs / temp_attentions).
BLOCK_2D_TO_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
}

# Image-UNet config values the video layout cannot reproduce (key: the only accepted value). Keys absent
# from a config take diffusers' default, which is the accepted value.
_REQUIRED_2D_CONFIG = {
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "center_input_sample": False,
    "flip_sin_to_cos": True,  # UNet3D hard-codes Timesteps(C, flip_sin_to_cos=True, freq_shift=0)
    "freq_shift": 0,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "upcast_attention": False,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "dropout": 0.0,
    "cross_attention_norm": None,
}

# Keys of a VideoUNet that have no counterpart in an image UNet: the temporal layers, and the frame-position
# encodings (which live inside the temporal transformers' proj_in).
TEMPORAL_KEY = re.compile(r"^transformer_in\.|\.temp_convs\.|\.temp_attentions\.")


# Keys of the scalar-condition embeddings (FPS, noise-augmentation level): also new, but not temporal layers.
CONDITION_EMBEDDINGS = {"fps_conditioning": "fps_embedding", "noise_level_conditioning": "noise_level_embedding"}
CONDITION_KEY = re.compile(r"^(%s)\." % "|".join(CONDITION_EMBEDDINGS.values()))


def is_temporal_key(key: str) -> bool:
    return bool(TEMPORAL_KEY.search(key))


def is_condition_key(key: str) -> bool:
    return bool(CONDITION_KEY.search(key))


def is_new_key(key: str) -> bool:
    """A key an image UNet has no counterpart for: temporal layers and scalar-condition embeddings."""
    return is_temporal_key(key) or is_condition_key(key)


@dataclass
class InflationReport:
    """Where every weight of an inflated VideoUNet came from (strict accounting, checked by `inflate`).

    mapped: image-UNet key -> video key (the same name; every image key is here, none is left unused);
    reshaped: video keys whose image weight was a 1x1 conv reshaped to a linear weight;
    widened: video keys that got extra zero-initialised input channels (`conv_in.weight`);
    new: video keys with no image counterpart (temporal layers and condition embeddings: `is_new_key`).
    """

    mapped: dict[str, str] = field(default_factory=dict)
    reshaped: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


class _FramePositionLinear(nn.Linear):
    """A temporal transformer's `proj_in` plus a learnable encoding of each frame's index.

    `TransformerTemporalModel` attends over frames with no position information, so it cannot tell
    frame 2 from frame 5. The encoding is added to the projected tokens (batch*H*W, frames, inner_dim)
    just before the attention blocks, so it stays inside the temporal branch instead of leaking into the
    residual stream. Zero-initialised: step 0 is still the identity. Its key is
    `...proj_in.frame_pos_embed`, next to the proj_in weights it belongs with.
    """

    def __init__(self, linear: nn.Linear, max_frames: int):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        # Share the original parameters (no copy, so this also works on accelerate's meta device).
        self.weight = linear.weight
        self.bias = linear.bias
        self.frame_pos_embed = nn.Parameter(
            torch.zeros(max_frames, linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        frames = tokens.shape[1]
        if frames > self.frame_pos_embed.shape[0]:
            raise UserInputError(
                f"{frames} frames but the frame-position encoding was built for at most "
                f"{self.frame_pos_embed.shape[0]} (max_frames)"
            )
        return super().forward(tokens) + self.frame_pos_embed[:frames]


def _default_checkpoint(function: Callable, *args):
    # Looked up at call time (not bound at import) so tests can count the calls.
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


class VideoUNet(UNet3DConditionModel):
    """`UNet3DConditionModel` that can be inflated from an SD 1.x UNet and trained as a video model.

    Input layout as `UNet3DConditionModel`: sample (B, C, F, H, W), encoder_hidden_states (B, L, D),
    repeated for every frame inside; output (B, C_out, F, H, W). Extra config (saved and restored by
    `save_pretrained`/`from_pretrained`): `spatial_attention_heads` (the image model's head count per
    level), `frame_position_encoding`/`max_frames`, `extra_in_channels` (the last `extra_in_channels` of
    `in_channels` are concatenated conditions, not latents), `fps_conditioning` and
    `noise_level_conditioning` (zero-initialised embeddings of a per-sample FPS and noise-augmentation
    level, modules `fps_embedding` / `noise_level_embedding`, added to the time embedding).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm", "time_embedding", *CONDITION_EMBEDDINGS.values()]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int = 64,
        num_attention_heads: int | None = None,
        time_cond_proj_dim: int | None = None,
        spatial_attention_heads: tuple[int, ...] | None = None,
        frame_position_encoding: bool = False,
        max_frames: int = 32,
        extra_in_channels: int = 0,
        fps_conditioning: bool = False,
        noise_level_conditioning: bool = False,
    ):
        if not isinstance(attention_head_dim, int):
            # UNet3D builds transformer_in with it as a head dimension; a tuple fails there.
            raise UserInputError(f"VideoUNet's attention_head_dim is one head dimension (an int), not {attention_head_dim!r}")
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        if not 0 <= extra_in_channels < in_channels:
            raise UserInputError(f"extra_in_channels={extra_in_channels} must be in [0, in_channels={in_channels})")
        if spatial_attention_heads is not None:
            self._set_spatial_heads(tuple(spatial_attention_heads))
        if frame_position_encoding:
            for temporal in self._temporal_transformers():
                temporal.proj_in = _FramePositionLinear(temporal.proj_in, max_frames)
        self._zero_temporal_outputs()
        wanted = {"fps_conditioning": fps_conditioning, "noise_level_conditioning": noise_level_conditioning}
        for flag, name in CONDITION_EMBEDDINGS.items():
            if wanted[flag]:
                setattr(self, name, self._zero_condition_embedding(block_out_channels[0]))
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = _default_checkpoint
        self._image_mode = False

    # --- construction helpers ---------------------------------------------------------------------------

    def _temporal_transformers(self) -> list[TransformerTemporalModel]:
        return [m for m in self.modules() if isinstance(m, TransformerTemporalModel)]

    def _zero_temporal_outputs(self) -> None:
        """Zero every temporal transformer's proj_out, so `x + proj_out(...)` is `x` at step 0.

        (TemporalConvLayer already zeroes its last conv in diffusers.) Done in __init__ so any VideoUNet,
        inflated or not, starts with identity temporal layers; `from_pretrained` then loads over it.
        """
        for temporal in self._temporal_transformers():
            nn.init.zeros_(temporal.proj_out.weight)
            nn.init.zeros_(temporal.proj_out.bias)

    def _zero_condition_embedding(self, channels: int) -> TimestepEmbedding:
        """The MLP of one scalar condition, on the time embedding's sinusoidal features (`time_proj`: a scalar
        is projected like a timestep, as I2VGen-XL does for FPS) into the time embedding's width.

        Its last layer starts at zero, so the embedding adds nothing until trained: step 0 is still the image
        model. (Only linear_2 is zeroed: linear_1 keeps its random init, so the gradient reaching linear_2
        is not zero and the condition starts to learn at the first step.)
        """
        embedding = TimestepEmbedding(channels, self.time_embedding.linear_2.out_features)
        nn.init.zeros_(embedding.linear_2.weight)
        nn.init.zeros_(embedding.linear_2.bias)
        return embedding

    def _spatial_transformers_by_level(self) -> list[tuple[list[Transformer2DModel], int]]:
        """(spatial transformers, level index into spatial_attention_heads), down, mid and up."""
        levels = len(self.down_blocks)
        groups = [(list(getattr(block, "attentions", [])), i) for i, block in enumerate(self.down_blocks)]
        groups.append((list(self.mid_block.attentions), levels - 1))
        groups += [(list(getattr(block, "attentions", [])), levels - 1 - i) for i, block in enumerate(self.up_blocks)]
        return groups

    def _set_spatial_heads(self, heads_per_level: tuple[int, ...]) -> None:
        """Give every spatial attention the image model's head count (and the matching softmax scale).

        UNet3D made each spatial transformer with channels // attention_head_dim heads. The projection
        weights are [inner, C] either way; only how `inner` is split into heads differs, so setting
        `heads` (used by every attention processor), `scale` (used by the non-SDPA ones) and
        `sliceable_head_dim` (attention slicing) is all it takes.
        """
        if len(heads_per_level) != len(self.down_blocks):
            raise UserInputError(f"spatial_attention_heads {heads_per_level} needs one entry per level ({len(self.down_blocks)})")
        for transformers, level in self._spatial_transformers_by_level():
            heads = heads_per_level[level]
            for transformer in transformers:
                width = transformer.proj_in.out_features
                if width % heads:
                    raise UserInputError(f"{width} channels do not split into {heads} heads")
                transformer.num_attention_heads = heads
                transformer.attention_head_dim = width // heads
                for block in transformer.transformer_blocks:
                    for attn in (block.attn1, block.attn2):
                        if attn is None:
                            continue
                        attn.heads = heads
                        attn.sliceable_head_dim = heads
                        attn.scale = (attn.inner_dim // heads) ** -0.5 if attn.scale_qk else 1.0

    # --- inflation -------------------------------------------------------------------------------------

    @classmethod
    def inflate(
        cls,
        unet2d: UNet2DConditionModel,
        *,
        frame_position_encoding: bool = False,
        max_frames: int = 32,
        extra_in_channels: int = 0,
        attention_head_dim: int | None = None,
        fps_conditioning: bool = False,
        noise_level_conditioning: bool = False,
    ) -> "VideoUNet":
        """A VideoUNet whose spatial layers are `unet2d`'s weights and whose temporal layers are the identity.

        `attention_head_dim` (the temporal layers' head dimension, also UNet3D's construction value for the
        spatial ones, whose head counts are then reset to the image model's) defaults to the largest value
        that divides every level's per-head width (40 for SD 1.5: 8, 16, 32 temporal heads).
        `fps_conditioning` / `noise_level_conditioning` add the zero-initialised scalar-condition embeddings.
        The returned model carries `inflation_report` (an `InflationReport`).
        """
        config = dict(unet2d.config)
        heads = _heads_per_level(config)
        widths = tuple(config["block_out_channels"])
        if attention_head_dim is None:
            attention_head_dim = functools.reduce(math.gcd, [w // h for w, h in zip(widths, heads)])
        if any(w % attention_head_dim for w in widths):
            raise UserInputError(f"attention_head_dim={attention_head_dim} does not divide every block width {widths}")
        cross_attention_dim = config["cross_attention_dim"]
        if not isinstance(cross_attention_dim, int):
            raise UserInputError(f"per-block cross_attention_dim {cross_attention_dim!r} is not supported")

        video = cls(
            sample_size=config.get("sample_size"),
            in_channels=config["in_channels"] + extra_in_channels,
            out_channels=config["out_channels"],
            down_block_types=tuple(BLOCK_2D_TO_3D[b] for b in config["down_block_types"]),
            up_block_types=tuple(BLOCK_2D_TO_3D[b] for b in config["up_block_types"]),
            block_out_channels=widths,
            layers_per_block=config["layers_per_block"],
            downsample_padding=config.get("downsample_padding", 1),
            mid_block_scale_factor=config.get("mid_block_scale_factor", 1),
            act_fn=config.get("act_fn", "silu"),
            norm_num_groups=config["norm_num_groups"],
            norm_eps=config.get("norm_eps", 1e-5),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            time_cond_proj_dim=config.get("time_cond_proj_dim"),
            spatial_attention_heads=heads,
            frame_position_encoding=frame_position_encoding,
            max_frames=max_frames,
            extra_in_channels=extra_in_channels,
            fps_conditioning=fps_conditioning,
            noise_level_conditioning=noise_level_conditioning,
        )

        report = InflationReport()
        source = unet2d.state_dict()
        target = video.state_dict()
        state = {}
        for key, weight in source.items():
            if key not in target:
                raise UserInputError(f"image-UNet weight {key} has no place in the video UNet")
            want = target[key].shape
            if weight.shape == want:
                state[key] = weight
            elif weight.ndim == 4 and weight.shape[2:] == (1, 1) and weight.shape[:2] == want:
                # A 1x1-conv proj_in/proj_out (use_linear_projection=False) as the linear layer UNet3D uses.
                state[key] = weight[:, :, 0, 0]
                report.reshaped.append(key)
            elif key == "conv_in.weight" and weight.shape[1] + extra_in_channels == want[1] and weight.shape[2:] == want[2:]:
                # Extra input channels for concatenated conditions start at zero: they change nothing
                # until trained, so step 0 is still the image model on the latents.
                zeros = weight.new_zeros(weight.shape[0], extra_in_channels, *weight.shape[2:])
                state[key] = torch.cat([weight, zeros], dim=1)
                report.widened.append(key)
            else:
                raise UserInputError(f"image-UNet weight {key} has shape {tuple(weight.shape)}, the video UNet wants {tuple(want)}")
            report.mapped[key] = key
        report.new = [key for key in target if key not in state]
        unexpected = [key for key in report.new if not is_new_key(key)]
        if unexpected:
            raise UserInputError(f"video-UNet weights with no image counterpart that are not temporal or condition embeddings: {unexpected[:5]}")
        for key in report.new:
            state[key] = target[key]  # the new layers as constructed (identity / zero at step 0)
        video.load_state_dict(state, strict=True)
        if (video.device, video.dtype) != (unet2d.device, unet2d.dtype):
            video.to(device=unet2d.device, dtype=unet2d.dtype)
        video.inflation_report = report
        return video

    # --- parameter groups ----------------------------------------------------------------------------

    def temporal_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The temporal layers inflation added (frame-position encodings included)."""
        return [(name, p) for name, p in self.named_parameters() if is_temporal_key(name)]

    def condition_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The FPS and noise-level embeddings (empty when neither conditioning is on)."""
        return [(name, p) for name, p in self.named_parameters() if is_condition_key(name)]

    def new_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Everything inflation added: temporal layers and condition embeddings (not the widened conv_in,
        whose image channels are the image model's)."""
        return [(name, p) for name, p in self.named_parameters() if is_new_key(name)]

    def spatial_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The image model's parameters (conv_in whole, widened channels included)."""
        return [(name, p) for name, p in self.named_parameters() if not is_new_key(name)]

    # --- growing a trained model ----------------------------------------------------------------------

    def extended(
        self,
        *,
        extra_in_channels: int | None = None,
        fps_conditioning: bool | None = None,
        noise_level_conditioning: bool | None = None,
    ) -> "VideoUNet":
        """A copy of this (trained) model with more concatenated input channels and/or more scalar conditions.

        Every weight of this model keeps its key and value; conv_in's added input channels (appended after the
        existing ones) and any added condition embedding start at zero, so the copy computes what this model
        computes on its inputs, whatever the new inputs are (how VideoGen starts a super-resolution stage from
        the trained stage below it, Section 3.5). Fewer channels or a dropped condition are refused: that
        would discard trained weights. The copy carries `inflation_report` (`widened`, `new`; `mapped` is
        every kept key).
        """
        config = dict(self.config)
        want = {
            "extra_in_channels": config["extra_in_channels"] if extra_in_channels is None else int(extra_in_channels),
            "fps_conditioning": config["fps_conditioning"] if fps_conditioning is None else bool(fps_conditioning),
            "noise_level_conditioning": (config["noise_level_conditioning"] if noise_level_conditioning is None
                                         else bool(noise_level_conditioning)),
        }
        if want["extra_in_channels"] < config["extra_in_channels"]:
            raise UserInputError(f"extra_in_channels={want['extra_in_channels']} would drop trained conv_in channels "
                                 f"(the model has {config['extra_in_channels']})")
        for flag in CONDITION_EMBEDDINGS:
            if config[flag] and not want[flag]:
                raise UserInputError(f"{flag}=False would drop a trained embedding")
        added = want["extra_in_channels"] - config["extra_in_channels"]
        config.update(want, in_channels=config["in_channels"] + added)
        accepted = inspect.signature(type(self).__init__).parameters
        grown = type(self)(**{k: v for k, v in config.items() if k in accepted})
        report = InflationReport()
        state, target = self.state_dict(), grown.state_dict()
        for key, weight in state.items():
            if key == "conv_in.weight" and added:
                weight = torch.cat([weight, weight.new_zeros(weight.shape[0], added, *weight.shape[2:])], dim=1)
                report.widened.append(key)
            report.mapped[key] = key
            target[key] = weight
        report.new = [key for key in target if key not in state]
        grown.load_state_dict(target, strict=True)
        if (grown.device, grown.dtype) != (self.device, self.dtype):
            grown.to(device=self.device, dtype=self.dtype)
        grown.inflation_report = report
        return grown

    # --- image mode and gradient checkpointing ---------------------------------------------------------

    @contextlib.contextmanager
    def as_image_model(self):
        """Within the block, forward() bypasses every temporal layer (as `image_mode=True`)."""
        previous, self._image_mode = self._image_mode, True
        try:
            yield self
        finally:
            self._image_mode = previous

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable | None = None) -> None:
        # Only this model's flag: the blocks' own `gradient_checkpointing` attributes are unused (this
        # forward never calls the blocks' forwards), and Transformer2DModel's would checkpoint a second
        # time inside our checkpoint.
        self.gradient_checkpointing = enable
        if gradient_checkpointing_func is not None:
            self._gradient_checkpointing_func = gradient_checkpointing_func

    def _run(self, function: Callable, *args):
        """function(*args), through activation checkpointing when enabled and training.

        Tensors go in as positional arguments (not closures) so that any checkpoint function, reentrant
        ones included, propagates their gradients. torch's checkpoint restores the RNG state for the
        recomputation, so the temporal convs' dropout draws the same mask twice.
        """
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(function, *args)
        return function(*args)

    def _resnet(self, resnet, hidden, temb):
        return self._run(resnet, hidden, temb)

    def _spatial(self, transformer, hidden, context, context_mask, cross_attention_kwargs):
        def run(hidden, context, context_mask):
            return transformer(
                hidden,
                encoder_hidden_states=context,
                encoder_attention_mask=context_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                return_dict=False,
            )[0]

        return self._run(run, hidden, context, context_mask)

    def _temporal_conv(self, conv, hidden, num_frames, image_mode):
        if image_mode:
            return hidden
        return self._run(functools.partial(conv, num_frames=num_frames), hidden)

    def _temporal_attention(self, transformer, hidden, num_frames, image_mode, cross_attention_kwargs):
        if image_mode:
            return hidden

        def run(hidden):
            return transformer(hidden, num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        return self._run(run, hidden)

    # --- forward ---------------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        image_mode: bool | None = None,
        extra_input: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        fps: torch.Tensor | float | None = None,
        noise_level: torch.Tensor | int | None = None,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """UNet3DConditionModel's forward, walking the blocks here (image mode, checkpointing).

        sample: (B, C, F, H, W); or (B, C, H, W) in image mode, returned as (B, C_out, H, W).
        extra_input: (B, extra_in_channels, F, H, W), concatenated to sample on channels (or pass the
        already concatenated sample). image_mode: bypass transformer_in, temporal convs and temporal
        transformers, so each frame goes through the image model alone (default: False, or True inside
        `as_image_model()`). encoder_attention_mask: (B, L), 1 keeps a text token, as in the image UNet.
        fps: (B,) (or one number) frames per second of the clip, for a model built with fps_conditioning;
        noise_level: (B,) (or one number) noise-augmentation level of the concatenated low-resolution input,
        for a model built with noise_level_conditioning. Either left None adds nothing (what the
        zero-initialised embedding adds before training); given to a model without it, it is refused.
        class_labels is accepted and ignored, as in UNet3D (inflation refuses class-conditioned UNets);
        attention_mask (unused by UNet3D's blocks too) is refused rather than silently dropped.
        """
        if attention_mask is not None:
            raise UserInputError("VideoUNet does not use attention_mask; pass encoder_attention_mask for text tokens")
        image_mode = self._image_mode if image_mode is None else image_mode
        image_input = sample.ndim == 4
        if image_input:
            if not image_mode:
                raise UserInputError("a 4-D sample (B, C, H, W) needs image_mode=True; videos are (B, C, F, H, W)")
            sample = sample[:, :, None]
            if extra_input is not None and extra_input.ndim == 4:
                extra_input = extra_input[:, :, None]
        if extra_input is not None:
            sample = torch.cat([sample, extra_input.to(sample.dtype)], dim=1)
        if sample.shape[1] != self.config.in_channels:
            raise UserInputError(
                f"sample has {sample.shape[1]} channels, the model takes {self.config.in_channels} "
                f"({self.config.extra_in_channels} of them extra conditions)"
            )
        batch, _, num_frames = sample.shape[:3]
        if self.config.frame_position_encoding and not image_mode and num_frames > self.config.max_frames:
            raise UserInputError(f"{num_frames} frames but max_frames={self.config.max_frames}")
        for block in self.up_blocks:
            if getattr(block, "s1", None):
                raise NotImplementedError("FreeU is not supported by VideoUNet")

        # Upsampling needs explicit sizes when H, W are not multiples of 2**num_upsamplers.
        forward_upsample_size = any(s % 2**self.num_upsamplers for s in sample.shape[-2:])
        upsample_size = None

        # 1. time (as UNet3D), then per-frame copies of the time and text embeddings
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(timestep, float) else torch.int64, sample.device)
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch)
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        for (flag, name), value in zip(CONDITION_EMBEDDINGS.items(), (fps, noise_level)):
            if value is None:
                continue
            if not self.config[flag]:
                raise UserInputError(f"{name.removesuffix('_embedding')}= given, but this model was built without {flag}")
            value = torch.as_tensor(value, device=sample.device)
            value = value.float().reshape(-1).expand(batch) if value.numel() == 1 else value.float().reshape(batch)
            emb = emb + getattr(self, name)(self.time_proj(value).to(dtype=self.dtype))
        emb = emb.repeat_interleave(num_frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        context_mask = None
        if encoder_attention_mask is not None:
            # As UNet2DConditionModel: keep = 1 -> bias 0, discard = 0 -> -10000, shape (B*F, 1, L).
            context_mask = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
            context_mask = context_mask.repeat_interleave(num_frames, dim=0).unsqueeze(1)

        # 2. frames into the batch axis: (B*F, C, H, W)
        hidden = sample.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, -1, *sample.shape[3:])
        hidden = self.conv_in(hidden)
        hidden = self._temporal_attention(self.transformer_in, hidden, num_frames, image_mode, cross_attention_kwargs)

        # 3. down
        skips = (hidden,)
        for block in self.down_blocks:
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                hidden = self._resnet(resnet, hidden, emb)
                hidden = self._temporal_conv(block.temp_convs[j], hidden, num_frames, image_mode)
                if attentions is not None:
                    hidden = self._spatial(attentions[j], hidden, context, context_mask, cross_attention_kwargs)
                    hidden = self._temporal_attention(block.temp_attentions[j], hidden, num_frames, image_mode, cross_attention_kwargs)
                skips += (hidden,)
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    hidden = downsampler(hidden)
                skips += (hidden,)

        if down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        # 4. mid: resnet, temporal conv, then (spatial attn, temporal attn, resnet, temporal conv)
        mid = self.mid_block
        hidden = self._resnet(mid.resnets[0], hidden, emb)
        hidden = self._temporal_conv(mid.temp_convs[0], hidden, num_frames, image_mode)
        for attn, temp_attn, resnet, temp_conv in zip(mid.attentions, mid.temp_attentions, mid.resnets[1:], mid.temp_convs[1:]):
            hidden = self._spatial(attn, hidden, context, context_mask, cross_attention_kwargs)
            hidden = self._temporal_attention(temp_attn, hidden, num_frames, image_mode, cross_attention_kwargs)
            hidden = self._resnet(resnet, hidden, emb)
            hidden = self._temporal_conv(temp_conv, hidden, num_frames, image_mode)
        if mid_block_additional_residual is not None:
            hidden = hidden + mid_block_additional_residual

        # 5. up
        for i, block in enumerate(self.up_blocks):
            is_final_block = i == len(self.up_blocks) - 1
            block_skips = skips[-len(block.resnets):]
            skips = skips[: -len(block.resnets)]
            if not is_final_block and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                hidden = torch.cat([hidden, block_skips[-1 - j]], dim=1)
                hidden = self._resnet(resnet, hidden, emb)
                hidden = self._temporal_conv(block.temp_convs[j], hidden, num_frames, image_mode)
                if attentions is not None:
                    hidden = self._spatial(attentions[j], hidden, context, context_mask, cross_attention_kwargs)
                    hidden = self._temporal_attention(block.temp_attentions[j], hidden, num_frames, image_mode, cross_attention_kwargs)
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    hidden = upsampler(hidden, upsample_size)

        # 6. out, back to (B, C, F, H, W)
        if self.conv_norm_out is not None:
            hidden = self.conv_act(self.conv_norm_out(hidden))
        hidden = self.conv_out(hidden)
        out = hidden.reshape(batch, num_frames, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
        if image_input:
            out = out[:, :, 0]
        if not return_dict:
            return (out,)
        return UNet3DConditionOutput(sample=out)


def _heads_per_level(config: dict) -> tuple[int, ...]:
    """The image UNet's attention head count per level, after checking the rest of its config fits.

    In UNet2DConditionModel `attention_head_dim` is (for historical reasons) the number of heads, an int
    for every level or one per level; `num_attention_heads`, when set, takes precedence.
    """
    for key, wanted in _REQUIRED_2D_CONFIG.items():
        if key in config and not _matches(config[key], wanted):
            raise UserInputError(f"cannot inflate an image UNet with {key}={config[key]!r} (the video layout needs {wanted!r})")
    for key in ("down_block_types", "up_block_types"):
        unknown = [b for b in config[key] if b not in BLOCK_2D_TO_3D]
        if unknown:
            raise UserInputError(f"cannot inflate {key} {unknown}: only {sorted(BLOCK_2D_TO_3D)}")
    if config.get("norm_num_groups") is None:
        raise UserInputError("cannot inflate an image UNet without group norms (norm_num_groups=None)")
    if not isinstance(config["layers_per_block"], int):
        raise UserInputError(f"per-block layers_per_block {config['layers_per_block']!r} is not supported")
    levels = len(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    heads = (heads,) * levels if isinstance(heads, int) else tuple(heads)
    if len(heads) != levels:
        raise UserInputError(f"{len(heads)} head counts for {levels} levels")
    for width, count in zip(config["block_out_channels"], heads):
        if width % count:
            raise UserInputError(f"{width} channels do not split into {count} heads")
    return heads


def _matches(value, wanted) -> bool:
    # Per-block settings (tuples) fit when every block has the wanted value.
    return value == wanted or (isinstance(value, (list, tuple)) and all(v == wanted for v in value))


def inflate(unet2d: UNet2DConditionModel, **kwargs) -> VideoUNet:
    """`VideoUNet.inflate(unet2d, ...)`."""
    return VideoUNet.inflate(unet2d, **kwargs)


def save_video_unet(directory, unet: VideoUNet, state_dict: dict[str, torch.Tensor] | None = None):
    """`unet`'s config and `state_dict` (default: its own weights) in diffusers' `save_pretrained` layout
    (config.json + diffusion_pytorch_model.safetensors), so `VideoUNet.from_pretrained` reads it back.

    Written by hand rather than by `save_pretrained` because a trainer's weights (gathered under FSDP, or the EMA
    ones) are a state dict, not the module's own parameters; DDP's `module.` prefixes are dropped.
    """
    from pathlib import Path

    from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = unet.state_dict() if state_dict is None else state_dict
    state = {key.removeprefix("module."): value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}
    expected = set(unet.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"video UNet weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    unet.save_config(str(directory))
    save_file(state, str(directory / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    return directory
