"""VideoGen's video decoder (paper Section 3.4): Stable Diffusion's 8x image decoder made spatio-temporal.

"We stack a 1D temporal convolution following each 2D convolution and a temporal attention following each spatial
attention. This modification also allows us to initialize the parameters of 2D convolutions and spatial attentions
in the video decoder using the parameters of the pretrained image decoder." (Section 3.4), and the temporal layers
start "as the identity function" (Section 3.5). So:

  * the spatial layers are diffusers' own: an `AutoencoderKL` `Decoder` is built with the VAE's config and its
    modules are adopted under their own names, so that the VAE's `decoder.*` and `post_quant_conv.*` weights load
    key for key (`from_vae`; nothing is renamed and nothing is left over);
  * after the two 3x3 convolutions of every resnet, a temporal convolution (kernel 3 over frames, per spatial
    position), residual and zero-initialised;
  * after every spatial attention (the mid block's), diffusers' `TransformerTemporalModel` (attention over frames
    per position) with its output projection zeroed, so that it too adds exactly zero at the start.

At initialisation the decoder therefore equals `AutoencoderKL.decode` frame by frame. Videos are (B, C, F, H, W);
inside, frames are stacked into the batch as (B*F, C, H, W), batch-major, as diffusers' video models do.

Why not diffusers' `AutoencoderKLTemporalDecoder` (SVD's decoder): it has no temporal attention, puts a whole
temporal resnet (two norms and convolutions) behind each spatial one and mixes them with a learnt `AlphaBlender`,
and hard-codes 32 normalisation groups, where the paper stacks one 1-D convolution after each 2-D one. Nor
`TemporalConvLayer`: four norm-activation-convolution layers (ModelScope's block) where the paper has one.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from ..errors import UserInputError

# Parameter names that belong to the temporal layers (everything else came from the image decoder).
TEMPORAL_MARKERS = ("temporal_conv", "temporal_attentions")


def is_temporal(name: str) -> bool:
    return any(marker in name for marker in TEMPORAL_MARKERS)


def frames_to_batch(video: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frames of one video consecutive."""
    batch, channels, frames, height, width = video.shape
    return video.transpose(1, 2).reshape(batch * frames, channels, height, width)


def batch_to_frames(images: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return images.unflatten(0, (images.shape[0] // frames, frames)).transpose(1, 2)


class TemporalConv(nn.Module):
    """x + Conv_t(x): a 1-D convolution over frames at every spatial position (a (k, 1, 1) Conv3d), zero-initialised.

    Replicate padding in time: a still clip stays still at its first and last frames too, so the clip ends are not
    decoded differently from its interior (they are what a chunked decode blends).
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                              padding_mode="replicate")
        nn.init.zeros_(self.conv.weight)  # identity at the start (Section 3.5)
        nn.init.zeros_(self.conv.bias)

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        return hidden + frames_to_batch(self.conv(batch_to_frames(hidden, num_frames)))


class SpatioTemporalResnet(nn.Module):
    """A decoder resnet of SD (diffusers' `ResnetBlock2D` without time embedding), a temporal conv after each conv.

    Its forward is ResnetBlock2D's for the decoder's case (no time embedding, no resampling) with the two temporal
    convolutions inserted; it is written out because diffusers' forward has no place to pass the frame count.
    """

    def __init__(self, resnet, kernel_size: int):
        super().__init__()
        if resnet.upsample is not None or resnet.downsample is not None or resnet.time_emb_proj is not None:
            raise ValueError("the image decoder's resnets take no time embedding and do not resample")
        self.norm1, self.conv1, self.norm2, self.conv2 = resnet.norm1, resnet.conv1, resnet.norm2, resnet.conv2
        self.nonlinearity, self.dropout = resnet.nonlinearity, resnet.dropout
        self.conv_shortcut, self.output_scale_factor = resnet.conv_shortcut, resnet.output_scale_factor
        self.temporal_conv1 = TemporalConv(self.conv1.out_channels, kernel_size)
        self.temporal_conv2 = TemporalConv(self.conv2.out_channels, kernel_size)

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        residual = hidden
        hidden = self.conv1(self.nonlinearity(self.norm1(hidden)))
        hidden = self.temporal_conv1(hidden, num_frames)
        hidden = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden))))
        hidden = self.temporal_conv2(hidden, num_frames)
        if self.conv_shortcut is not None:
            residual = self.conv_shortcut(residual)
        return (residual + hidden) / self.output_scale_factor


def temporal_attention(channels: int, heads: int, groups: int) -> TransformerTemporalModel:
    """diffusers' temporal transformer (one self-attention over frames and a feed-forward, per position) with its
    output projection zeroed: it adds exactly nothing at the start. No frame-position encoding: the decoder must
    take any number of frames (whole clips or chunks), and the temporal convolutions already see frame order."""
    if channels % heads:
        raise ValueError(f"temporal_attention_heads={heads} does not divide the mid block's {channels} channels")
    attention = TransformerTemporalModel(num_attention_heads=heads, attention_head_dim=channels // heads,
                                         in_channels=channels, norm_num_groups=groups, double_self_attention=False)
    nn.init.zeros_(attention.proj_out.weight)
    nn.init.zeros_(attention.proj_out.bias)
    return attention


class _Checkpointed(nn.Module):
    """Runs a unit under diffusers' gradient-checkpointing function when `enable_gradient_checkpointing()` is on."""

    gradient_checkpointing = False

    def run(self, unit, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(unit, *args)
        return unit(*args)


class SpatioTemporalMidBlock(_Checkpointed):
    """SD's mid block (resnet, attention, resnet) with a temporal attention after the spatial one."""

    def __init__(self, mid_block, kernel_size: int, with_temporal_attention: bool, heads: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(SpatioTemporalResnet(resnet, kernel_size) for resnet in mid_block.resnets)
        self.attentions = mid_block.attentions  # diffusers' Attention, as the VAE has it (or None without)
        self.temporal_attentions = nn.ModuleList(
            temporal_attention(attention.query_dim, heads, groups) if attention is not None and with_temporal_attention
            else None
            for attention in self.attentions
        )

    def attend(self, hidden: torch.Tensor, index: int, num_frames: int) -> torch.Tensor:
        hidden = self.attentions[index](hidden)
        temporal = self.temporal_attentions[index]
        if temporal is None:
            return hidden
        attended = temporal(hidden, num_frames=num_frames).sample
        # diffusers' spatial attention hands on a channels-last tensor, and the next resnet's norm and convolution
        # sum in another order on another memory layout: keeping the layout keeps the decode at initialisation
        # bit-identical to the VAE's (otherwise ~1e-5 apart).
        if hidden.is_contiguous(memory_format=torch.channels_last):
            attended = attended.contiguous(memory_format=torch.channels_last)
        return attended

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        hidden = self.run(self.resnets[0], hidden, num_frames)
        for index, resnet in enumerate(self.resnets[1:]):
            if self.attentions[index] is not None:
                hidden = self.run(self.attend, hidden, index, num_frames)
            hidden = self.run(resnet, hidden, num_frames)
        return hidden


class SpatioTemporalUpBlock(_Checkpointed):
    """SD's `UpDecoderBlock2D`: spatio-temporal resnets, then diffusers' own 2x upsampler."""

    def __init__(self, up_block, kernel_size: int):
        super().__init__()
        self.resnets = nn.ModuleList(SpatioTemporalResnet(resnet, kernel_size) for resnet in up_block.resnets)
        self.upsamplers = up_block.upsamplers

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        for resnet in self.resnets:
            hidden = self.run(resnet, hidden, num_frames)
        for upsampler in self.upsamplers or ():
            hidden = self.run(upsampler, hidden)
        return hidden


class SpatioTemporalDecoder(nn.Module):
    """diffusers' `Decoder` (conv_in, mid block, up blocks, norm, conv_out) with the spatio-temporal blocks."""

    def __init__(self, decoder: Decoder, kernel_size: int, with_temporal_attention: bool, heads: int, groups: int):
        super().__init__()
        self.conv_in = decoder.conv_in
        self.mid_block = SpatioTemporalMidBlock(decoder.mid_block, kernel_size, with_temporal_attention, heads, groups)
        self.up_blocks = nn.ModuleList(SpatioTemporalUpBlock(block, kernel_size) for block in decoder.up_blocks)
        self.conv_norm_out, self.conv_act, self.conv_out = decoder.conv_norm_out, decoder.conv_act, decoder.conv_out

    def forward(self, sample: torch.Tensor, num_frames: int) -> torch.Tensor:
        sample = self.mid_block(self.conv_in(sample), num_frames)
        sample = sample.to(next(self.up_blocks.parameters()).dtype)  # as diffusers' Decoder (upcast VAEs)
        for block in self.up_blocks:
            sample = block(sample, num_frames)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


def chunk_windows(frames: int, chunk_frames: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) windows of `chunk_frames` covering `frames`, consecutive ones sharing at least `overlap`
    frames; the last one ends at the last frame (and may share more)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    if not 0 <= overlap < chunk_frames:
        raise ValueError(f"overlap must be at least 0 and below chunk_frames={chunk_frames}, got {overlap}")
    starts = [0]
    while starts[-1] + chunk_frames < frames:
        starts.append(min(starts[-1] + chunk_frames - overlap, frames - chunk_frames))
    return [(start, min(start + chunk_frames, frames)) for start in starts]


class VideoDecoder(ModelMixin, ConfigMixin):
    """Unscaled latents (B, 4, F, h, w) -> pixels (B, 3, F, 8h, 8w) in about [-1, 1] (SD geometry)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        use_post_quant_conv: bool = True,
        scaling_factor: float = 0.18215,  # the VAE's: latents of the diffusion model divided by it come in here
        temporal_kernel_size: int = 3,
        temporal_attention: bool = True,
        temporal_attention_heads: int = 8,
    ):
        super().__init__()
        if temporal_kernel_size < 1 or temporal_kernel_size % 2 == 0:
            raise ValueError(f"temporal_kernel_size must be odd (frames in, same frames out), got {temporal_kernel_size}")
        block_out_channels = tuple(block_out_channels)
        image_decoder = Decoder(  # exactly what AutoencoderKL builds, so the VAE's keys are these
            in_channels=latent_channels, out_channels=out_channels,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels), block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.decoder = SpatioTemporalDecoder(image_decoder, temporal_kernel_size, temporal_attention,
                                             temporal_attention_heads, norm_num_groups)

    # --- from the image VAE --------------------------------------------------------------------------------

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, *, temporal_attention: bool = True, temporal_attention_heads: int = 8,
                 temporal_kernel_size: int = 3) -> "VideoDecoder":
        """The video decoder of `vae`: its decoder and post_quant_conv weights copied, temporal layers identity.

        On the VAE's device and dtype; every `decoder.*` / `post_quant_conv.*` weight of the VAE lands under the same
        name, and every other weight of the result is temporal (checked: a mismatch raises)."""
        config = vae.config
        blocks = tuple(config.up_block_types)
        if any(block != "UpDecoderBlock2D" for block in blocks):
            raise UserInputError(f"the model's VAE decoder has up blocks {', '.join(blocks)}; the video decoder "
                                 "inflates Stable Diffusion's UpDecoderBlock2D decoder")
        decoder = cls(
            latent_channels=config.latent_channels, out_channels=config.out_channels,
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups, act_fn=config.act_fn,
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            use_post_quant_conv=config.get("use_post_quant_conv", True), scaling_factor=float(config.scaling_factor),
            temporal_kernel_size=temporal_kernel_size, temporal_attention=temporal_attention,
            temporal_attention_heads=temporal_attention_heads,
        )
        image_weights = {key: value for key, value in vae.state_dict().items()
                         if key.startswith(("decoder.", "post_quant_conv."))}
        missing, unexpected = decoder.load_state_dict(image_weights, strict=False)
        unmapped = [key for key in missing if not is_temporal(key)]
        if unexpected or unmapped:
            raise RuntimeError(f"VAE weights without a place: {unexpected}; spatial weights not from the VAE: {unmapped}")
        decoder.to(vae.device)
        return decoder if vae.dtype == decoder.dtype else decoder.to(dtype=vae.dtype)

    # --- parameters ----------------------------------------------------------------------------------------

    def spatial_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The 2-D convolutions, norms and spatial attention: initialised from the image decoder."""
        return [(name, p) for name, p in self.named_parameters() if not is_temporal(name)]

    def temporal_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The temporal convolutions and attentions: new, identity at the start."""
        return [(name, p) for name, p in self.named_parameters() if is_temporal(name)]

    # --- decoding ------------------------------------------------------------------------------------------

    def forward(self, latents: torch.Tensor, *, chunk_frames: int | None = None, overlap: int = 2) -> torch.Tensor:
        return self.decode(latents, chunk_frames=chunk_frames, overlap=overlap)

    def decode(self, latents: torch.Tensor, *, chunk_frames: int | None = None, overlap: int = 2) -> torch.Tensor:
        """Unscaled latents (B, C, F, h, w) -> pixels (B, 3, F, 8h, 8w).

        `chunk_frames`: decode in temporal windows of that many frames, consecutive ones sharing `overlap` frames
        that are blended linearly, so that peak memory stays flat in F (the output buffer aside); None decodes all
        frames at once. The blend is a lerp from the earlier window's frame to the later one's, which gives back a
        frame exactly when both windows decoded it alike (as at initialisation, where frames are independent).
        """
        if latents.ndim != 5:
            raise ValueError(f"latents must be (batch, channels, frames, height, width), got shape {tuple(latents.shape)}")
        frames = latents.shape[2]
        if chunk_frames is None or chunk_frames >= frames:
            return self._decode_window(latents)
        output, done = None, 0
        for start, stop in chunk_windows(frames, chunk_frames, overlap):
            pixels = self._decode_window(latents[:, :, start:stop])
            if output is None:
                output = pixels.new_empty(pixels.shape[0], pixels.shape[1], frames, *pixels.shape[3:])
            shared = done - start
            if shared:
                ramp = torch.arange(1, shared + 1, device=pixels.device, dtype=pixels.dtype) / (shared + 1)
                output[:, :, start:done] = torch.lerp(output[:, :, start:done], pixels[:, :, :shared],
                                                      ramp.view(1, 1, -1, 1, 1))
            output[:, :, done:stop] = pixels[:, :, shared:]
            done = stop
        return output

    def _decode_window(self, latents: torch.Tensor) -> torch.Tensor:
        frames = latents.shape[2]
        sample = frames_to_batch(latents)
        if self.post_quant_conv is not None:
            sample = self.post_quant_conv(sample)
        return batch_to_frames(self.decoder(sample, frames), frames)


# --- peak memory of a decode (tests and benchmarks) ---------------------------------------------------------------


def decode_peak_memory(frames: int, *, chunk_frames: int | None = None, overlap: int = 2, size: int = 64,
                       block_out_channels: tuple[int, ...] = (32, 64, 64, 64), norm_num_groups: int = 8,
                       temporal_attention_heads: int = 4, batch: int = 1, seed: int = 0) -> dict:
    """Peak memory of one no-grad decode of `frames` frames at `size` px, in this process, measured as
    scripts/benchmark_train.py does: on CPU the growth of ru_maxrss over the RSS before the decode (call it in a
    fresh process: `decode_peak_memory_fresh`). A random decoder of SD geometry (weights do not change memory)."""
    torch.manual_seed(seed)
    decoder = VideoDecoder(block_out_channels=block_out_channels, norm_num_groups=norm_num_groups,
                           temporal_attention_heads=temporal_attention_heads).eval()
    latent = size // 2 ** (len(block_out_channels) - 1)
    latents = torch.randn(batch, decoder.config.latent_channels, frames, latent, latent,
                          generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # warm-up at one frame: lazily built kernels and thread pools do not count as decode memory
        decoder(latents[:, :, :1])
    rss_before = _rss_mib()
    started = time.perf_counter()
    with torch.no_grad():
        pixels = decoder(latents, chunk_frames=chunk_frames, overlap=overlap)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"frames": frames, "chunk_frames": chunk_frames, "overlap": overlap, "size": size,
            "output_shape": list(pixels.shape), "peak_mib": peak, "decode_s": seconds}


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def decode_peak_memory_fresh(frames: int, **settings) -> dict:
    """`decode_peak_memory` in a fresh Python process, with glibc's mmap threshold lowered (128 KiB) so that freed
    tensors leave the RSS and its peak tracks live tensors, not the heap glibc keeps cached."""
    call = f"decode_peak_memory({int(frames)}, **{settings!r})"
    code = f"import json; from stylevid.models.video_decoder import decode_peak_memory; print(json.dumps({call}))"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if output.returncode:
        raise RuntimeError(f"the decode measurement failed: {output.stderr.strip().splitlines()[-1:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])
